"""The paper presets (conf/experiment/paper/<optimizer>_<size>.yaml) compose to the published settings.

SCALE's are compared field by field with the authors' run scripts (OptimAI-Lab/Minimalist_LLM_Pretraining
scripts/<size>_scale.sh, and args.py for what a script leaves at its default); every preset must also equal
what `optimizer=<name> model=llama_<size>` resolves to, so the two ways of asking for a paper run agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment" / "paper").glob("*.yaml"))

# The authors' scripts, flag by flag: --lr --adam_lr (args.py default 2e-2 where not passed) --momentum
# --weight_decay --batch_size --total_batch_size --num_training_steps --warmup_steps (all scripts also pass
# --dtype bfloat16 --eval_every 1000 --seed 42 --scheduler cosine; max_length and min_lr_ratio are args.py's
# defaults 256 and 0.1).
_FLAGS = ("lr", "adam_lr", "momentum", "weight_decay", "batch_size", "steps", "warmup")
AUTHORS_SCRIPTS = {size: dict(zip(_FLAGS, values)) for size, values in {
    "60m": (1e-3, 2e-2, 0.9, 0.0, 256, 11000, 1100),
    "130m": (1e-3, 2e-2, 0.9, 0.0, 256, 20000, 2000),
    "350m": (1e-3, 2e-2, 0.9, 0.0, 128, 60000, 6000),
    "1b": (2e-4, 1e-3, 0.9, 0.0, 64, 100000, 10000),
    "7b": (1e-4, 1e-3, 0.9, 0.0, 32, 150000, 15000),
}.items()}
PAPER_PARAMS_M = {"60m": 58.07, "130m": 134.11, "350m": 367.97, "1b": 1339.08, "7b": 6738.42}


def resolved(*overrides: str) -> dict:
    """The config run.py would get, resolved (paths and ${hydra:...} included), without running anything."""
    cfg = compose_config(*overrides, hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    # hydra.* itself holds multirun-only values; every other key resolves as in a single run.
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


def test_every_optimizer_of_the_table_has_its_presets():
    expected = {f"{opt}_{size}" for opt in ("adam", "stable_spam", "muon", "galore", "fira", "swan", "apollo",
                                            "apollo_mini", "scale") for size in ("60m", "130m", "350m", "1b")}
    expected |= {"scale_7b", "muon_7b", "apollo_7b", "apollo_mini_7b"}  # the paper's 7B rows
    assert set(PRESETS) == expected


@pytest.mark.parametrize("size", sorted(AUTHORS_SCRIPTS))
def test_scale_presets_equal_the_authors_scripts(size):
    script = AUTHORS_SCRIPTS[size]
    cfg = resolved(f"experiment=paper/scale_{size}")
    opt, train, data = cfg["optimizer"], cfg["train"], cfg["data"]
    assert (opt["name"], opt["normalization"], opt["momentum_on"]) == ("scale", "column", "last")
    assert opt["lr"] == script["lr"] and opt["adam_lr"] == script["adam_lr"]
    assert opt["momentum"] == script["momentum"] and opt["weight_decay"] == script["weight_decay"]
    assert opt["adam_betas"] == [0.9, 0.999] and opt["adam_eps"] == 1e-8  # --adam_beta_1/2 defaults, adamw_eps
    assert train["total_batch_size"] == 512 and train["micro_batch_size"] == script["batch_size"]
    assert train["max_steps"] == script["steps"] and train["warmup_steps"] == script["warmup"]
    assert train["eval_every_n_steps"] == 1000 and cfg["seed"] == 42
    assert cfg["scheduler"]["_target_"].endswith("WarmupCosine") and cfg["scheduler"]["min_lr_ratio"] == 0.1
    assert cfg["trainer"]["precision"] == "bf16-true" and cfg["trainer"]["gradient_clip_val"] is None
    assert (data["source"], data["tokenizer"], data["seq_len"], data["row_format"]) == ("c4", "t5-base", 256, "paper")
    assert cfg["model"]["name"] == f"llama_{size}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_what_optimizer_and_model_resolve_to(preset):
    opt, size = preset.rsplit("_", 1)
    from_preset = resolved(f"experiment=paper/{preset}")
    from_pair = resolved(f"optimizer={opt}", f"model=llama_{size}")
    assert from_preset["optimizer"] == from_pair["optimizer"]
    assert from_preset["model"] == from_pair["model"]
    for key in ("total_batch_size", "max_steps", "warmup_steps", "eval_every_n_steps"):
        assert from_preset["train"][key] == from_pair["train"][key], key
    assert from_preset["scheduler"] == from_pair["scheduler"]
    assert from_preset["train"]["max_steps"] == AUTHORS_SCRIPTS[size]["steps"]  # every method, same tokens
    assert from_preset["task_name"] == "paper"


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS_M))
def test_preset_models_have_the_papers_parameter_counts(size):
    from optsweep.models.llama import ModelSpec, build_llama, count_parameters

    spec = resolved(f"experiment=paper/scale_{size}")["model"]
    spec.pop("_target_")
    model = build_llama(ModelSpec(**spec), device="meta")
    assert round(count_parameters(model) / 1e6, 2) == PAPER_PARAMS_M[size]
