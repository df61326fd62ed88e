"""Every bad input gets one sentence naming the field, the value and the fix (issue 8).

Half the table runs in process against the checks run.py calls before training (fast); the rest go through
run.py in subprocesses, run in parallel, to check the whole path: exit code, last stderr line, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _inject import ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig

from optsweep.config import register_resolvers
from optsweep.data.datamodule import LMDataModule
from optsweep.errors import UserError
from optsweep.training.checkpointing import check_compatible, find_resume_checkpoint, read_checkpoint_meta
from optsweep.training.train import build_budget
from optsweep.training.validate import check_config, check_vocabulary

QUICK = ["experiment=quickstart", "train.max_steps=2", "train.warmup_steps=0"]


def composed(*overrides: str) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*QUICK, *overrides])


# (id, overrides, what the sentence must contain)
CONFIG_CASES = [
    ("lr zero", ["optimizer.lr=0"], ["optimizer.lr=0", "positive", "optimizer.lr=1e-3"]),
    ("lr negative", ["optimizer.lr=-0.01"], ["optimizer.lr=-0.01", "positive"]),
    ("scale adam_lr", ["optimizer=scale", "optimizer.adam_lr=0"], ["optimizer.adam_lr=0", "positive"]),
    ("momentum", ["optimizer=scale", "optimizer.momentum=1.5"], ["optimizer.momentum=1.5", "[0, 1)"]),
    ("beta2 is 1", ["optimizer.betas=[0.9,1.0]"], ["optimizer.betas[1]=1.0", "[0, 1)", "optimizer.betas="]),
    ("beta1 negative", ["optimizer.betas=[-0.1,0.99]"], ["optimizer.betas[0]=-0.1"]),
    ("weight decay", ["optimizer.weight_decay=-0.1"], ["optimizer.weight_decay=-0.1", ">= 0"]),
    ("unknown option", ["+optimizer.foo=1"], ["has no option 'foo'", "remove optimizer.foo", "weight_decay"]),
    ("scale option on adamw", ["+optimizer.normalization=row"], ["'adamw' has no option 'normalization'"]),
    ("seq_len", ["data.seq_len=1024"], ["data.seq_len=1024", "max_position_embeddings=512", "data.seq_len<=512"]),
    ("gpu on cpu box", ["trainer=gpu"], ["trainer.accelerator=gpu", "no CUDA GPU", "trainer=cpu"]),
    ("eval interval", ["train.eval_every_n_steps=0"], ["train.eval_every_n_steps=0", "positive integer"]),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU case assumes a CPU-only machine")
@pytest.mark.parametrize("overrides,expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_checks(overrides, expected):
    with pytest.raises(UserError) as info:
        check_config(composed(*overrides))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("group,value", [("optimizer", "adamx"), ("model", "llama_2m"), ("data", "c5"),
                                         ("strategy", "fsdp1")])
def test_unknown_group_option_lists_the_valid_ones(group, value):
    with pytest.raises(MissingConfigException) as info:
        composed(f"{group}={value}")
    message = str(info.value)
    assert f"Could not find '{group}/{value}'" in message and f"Available options in '{group}'" in message
    valid = {"optimizer": "scale", "model": "llama_60m", "data": "c4_local", "strategy": "ddp"}[group]
    assert valid in message


def test_indivisible_batch():
    with pytest.raises(UserError, match=r"train.total_batch_size=10 is not divisible"):
        build_budget(composed("train.total_batch_size=10", "train.micro_batch_size=4"))


def test_tokenizer_ids_beyond_vocab():
    with pytest.raises(UserError, match=r"produces ids up to 4095 but model.vocab_size=100: set model.vocab_size>=4096"):
        check_vocabulary(100, 4095, "sample")


def test_checkpoint_problems(tmp_path):
    with pytest.raises(UserError, match=r"train.ckpt_path=.*nope.ckpt does not exist: give an existing"):
        find_resume_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)
    assert find_resume_checkpoint("last", tmp_path) is None  # nothing saved yet: a fresh run
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match=r"cannot be read .* corrupt or not a checkpoint"):
        read_checkpoint_meta(str(garbage))
    meta = {"optimizer": "adamw", "model": "llama_tiny", "world_size": 2}
    with pytest.raises(UserError, match=r"model=llama_tiny, not model=llama_60m: resume with model=llama_tiny"):
        check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_60m", world_size=2)
    with pytest.raises(UserError, match=r"optimizer=adamw, not optimizer=scale: resume with optimizer=adamw"):
        check_compatible(meta, "x.ckpt", optimizer="scale", model="llama_tiny", world_size=2)
    with pytest.raises(UserError, match=r"saved by 2 processes but this run has 1.*resume with 2 processes"):
        check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_tiny", world_size=1)
    check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_tiny", world_size=2)


def test_c4_local_missing_or_empty(tmp_path):
    with pytest.raises(UserError, match=r"data=c4_local needs the folder"):
        LMDataModule(source="c4_local", path=None)
    for path in (tmp_path / "missing", tmp_path):  # absent, and present without shards
        with pytest.raises(UserError) as info:
            LMDataModule(source="c4_local", path=str(path), tokenizer=str(tmp_path)).shards("train")
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- through run.py: exit code, one `error:` line last, no traceback --------------------------------------

def _cli_cases(tmp: Path) -> list[tuple[str, list[str], int, list[str]]]:
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    return [
        ("unknown optimizer", ["optimizer=adamx"], 1, ["Could not find 'optimizer/adamx'"]),
        ("lr", ["optimizer.lr=0"], 2, ["error: optimizer.lr=0 must be a positive number"]),
        ("vocab", ["model.vocab_size=100"], 2, ["error: tokenizer sample produces ids up to", "model.vocab_size>="]),
        ("c4_local missing", ["data=c4_local", f"data.path={tmp}/nowhere", "data.tokenizer=t5-base"], 2,
         ["error:", f"{tmp}/nowhere"]),
        ("corrupt checkpoint", [f"train.ckpt_path={garbage}"], 2, ["error: checkpoint", "corrupt"]),
    ]


def test_cli_one_sentence_and_exit_code(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cases = _cli_cases(tmp_path)
    procs = []
    for i, (_, overrides, _, _) in enumerate(cases):
        cmd = [sys.executable, str(ROOT / "run.py"), f"paths.data_dir={tmp_path.parent / 'shared-data'}",
               *QUICK, *overrides]
        procs.append(subprocess.Popen(cmd, env={**env, "PROJECT_ROOT": str(tmp_path / str(i))}, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for (name, _, code, expected), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == code, (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        last = stderr.strip().splitlines()[-1] if code == 2 else stderr
        for part in expected:
            assert part in last, (name, part, last)
