"""Every bad input gets one sentence naming the field, the value and the fix (issue 8).

Most of the table runs in process against what run.py calls before training: ``check_config`` (fast, no
data, no training) and ``explain``, which turns Hydra's and OmegaConf's errors (unknown group option, key
typo, a value of the wrong type for the schema, unparsable override, ``???`` value) into the sentence run.py
prints. A few cases go through run.py in subprocesses, run in parallel, to check the whole path: exit code,
one `error:` line last, no traceback, no MLflow run opened and no checkpoint moved by a run that was refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _inject import ROOT
from conftest import CONF, compose_config
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optsweep.data.datamodule import LMDataModule
from optsweep.data.sample import ensure_sample
from optsweep.errors import UserError, explain
from optsweep.preflight import (
    check_config,
    check_multirun,
    check_vocabulary,
    devices,
    memory,
    register_schema,
)
from optsweep.training.checkpoint_io import check_compatible, find_resume_checkpoint, read_checkpoint_meta
from optsweep.training.train import build_budget

QUICK = ["experiment=quickstart", "train.max_steps=2", "train.warmup_steps=0"]


def composed(*overrides: str) -> DictConfig:
    return compose_config(*QUICK, *overrides)


@pytest.fixture
def machine(monkeypatch):
    """The same machine everywhere: 2 CPU cores and 16 GiB of memory."""
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    monkeypatch.setattr(memory, "physical_memory", lambda: 16 * 2**30)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="assumes a CPU-only machine")

# (id, overrides, what the sentence must contain[, marks])
CONFIG_CASES = [
    # optimizer values: ranges, types (from the optimizer's signature), and what its constructor refuses
    ("lr zero", ["optimizer.lr=0"], ["optimizer.lr=0", "positive", "optimizer.lr=1e-3"]),
    ("lr negative", ["optimizer.lr=-0.01"], ["optimizer.lr=-0.01", "positive"]),
    ("lr nan", ["optimizer.lr=nan"], ["optimizer.lr=nan", "finite number", "optimizer.lr=1e-3"]),
    ("lr inf", ["optimizer.lr=inf"], ["optimizer.lr=inf", "finite number"]),
    ("lr text", ["optimizer.lr=abc"], ["optimizer.lr=abc", "finite number"]),
    ("eps negative", ["optimizer.eps=-1e-8"], ["optimizer.eps=-1e-08", "positive", "optimizer.eps=1e-8"]),
    ("scale adam_lr", ["optimizer=scale", "optimizer.adam_lr=0"], ["optimizer.adam_lr=0", "positive"]),
    ("momentum", ["optimizer=scale", "optimizer.momentum=1.5"], ["optimizer.momentum=1.5", "[0, 1)"]),
    ("momentum is 1", ["optimizer=scale", "optimizer.momentum=1.0"], ["optimizer.momentum=1.0", "[0, 1)"]),
    ("beta2 is 1", ["optimizer.betas=[0.9,1.0]"], ["optimizer.betas[1]=1.0", "[0, 1)", "optimizer.betas="]),
    ("beta1 negative", ["optimizer.betas=[-0.1,0.99]"], ["optimizer.betas[0]=-0.1"]),
    ("one beta", ["optimizer.betas=[0.9]"], ["optimizer.betas=[0.9]", "two numbers", "optimizer.betas=[0.9,0.999]"]),
    ("three betas", ["optimizer.betas=[0.9,0.99,0.5]"], ["optimizer.betas=[0.9,0.99,0.5]", "two numbers"]),
    ("betas a number", ["optimizer.betas=0.9"], ["optimizer.betas=0.9", "a list"]),
    ("muon adam_betas", ["optimizer=muon", "optimizer.adam_betas=[0.9,1.5]"], ["optimizer.adam_betas[1]=1.5"]),
    ("weight decay", ["optimizer.weight_decay=-0.1"], ["optimizer.weight_decay=-0.1", ">= 0"]),
    ("weight decay text", ["optimizer.weight_decay=abc"], ["optimizer.weight_decay=abc", "finite number"]),
    ("bool option", ["optimizer=sgd", "optimizer.nesterov=yes"], ["optimizer.nesterov=yes", "true or false"]),
    ("bool-or-null option", ["optimizer.fused=maybe"], ["optimizer.fused=maybe", "true or false"]),
    ("int option", ["optimizer=galore", "optimizer.rank=0.5"], ["optimizer.rank=0.5", "integer", "optimizer.rank=128"]),
    ("muon ns_steps", ["optimizer=muon", "optimizer.ns_steps=0"], ["optimizer.ns_steps=0", "positive integer"]),
    ("galore gap", ["optimizer=galore", "optimizer.update_proj_gap=0"],
     ["optimizer.update_proj_gap=0", "refused by optimizer galore", "update_proj_gap must be >= 1"]),
    ("scale normalization typo", ["optimizer=scale", "optimizer.normalization=colum"],
     ["optimizer.normalization=colum", "refused by optimizer scale", "column"]),
    ("scale momentum_on", ["optimizer=scale", "optimizer.momentum_on=first"], ["optimizer.momentum_on=first", "last"]),
    ("muon adjust_lr typo", ["optimizer=muon", "optimizer.adjust_lr=orignal"], ["optimizer.adjust_lr=orignal", "original"]),
    ("fsdp and a bad lr", ["strategy=fsdp", "optimizer.lr=-1"], ["optimizer.lr=-1", "positive"]),
    ("unknown option", ["+optimizer.foo=1"], ["has no option 'foo'", "remove optimizer.foo", "weight_decay"]),
    ("option typo", ["+optimizer.weight_decy=0.1"], ["has no option 'weight_decy'", "did you mean optimizer.weight_decay?"]),
    ("scale option on adamw", ["+optimizer.normalization=row"], ["'adamw' has no option 'normalization'"]),
    # keys added with + that nothing reads (Hydra's own hint for a typo is to add one)
    ("train key typo", ["+train.max_step=5"], ["train.max_step=5", "did you mean train.max_steps?"]),
    ("train key unknown", ["+train.foo=1"], ["train.foo=1", "its settings are", "total_batch_size"]),
    ("divergence key typo", ["+divergence.max_skiped_steps=1"], ["did you mean divergence.max_skipped_steps?"]),
    ("top-level key typo", ["+sed=1"], ["sed=1 is not a setting at the top level", "did you mean seed?"]),
    ("trainer key typo", ["+trainer.devcies=2"], ["trainer.devcies=2", "did you mean trainer.devices?"]),
    ("data key typo", ["+data.seqlen=64"], ["data.seqlen=64", "did you mean data.seq_len?"]),
    ("logger key typo", ["logger=mlflow", "+logger.mlflow.trackin_uri=x"], ["did you mean logger.mlflow.tracking_uri?"]),
    ("derived trainer key", ["+trainer.accumulate_grad_batches=4"],
     ["trainer.accumulate_grad_batches=4", "set by optsweep", "train.total_batch_size"]),
    # the run's numbers
    ("total batch negative", ["train.total_batch_size=-4"],
     ["train.total_batch_size=-4", "positive integer", "train.total_batch_size=512"]),
    ("micro batch zero", ["train.micro_batch_size=0"], ["train.micro_batch_size=0", "positive integer"]),
    ("two budgets", ["train.max_tokens=1000"], ["train.max_steps=2 and train.max_tokens=1000", "exactly one"]),
    ("no budget", ["train.max_steps=null"], ["train.max_steps=null and train.max_tokens=null", "exactly one"]),
    ("warmup beyond steps", ["train.warmup_steps=5"], ["train.warmup_steps=5 exceeds train.max_steps=2",
                                                        "train.warmup_steps<=2"]),
    ("warmup ratio", ["train.warmup_steps=null", "train.warmup_ratio=1.5"], ["train.warmup_ratio=1.5", "[0, 1]"]),
    ("eval interval", ["train.eval_every_n_steps=0"], ["train.eval_every_n_steps=0", "positive integer"]),
    ("init_seed", ["init_seed=-1"], ["init_seed=-1", "init_seed=42"]),
    ("divergence interval", ["divergence.check_every_n_steps=0"], ["divergence.check_every_n_steps=0"]),
    ("seq_len zero", ["data.seq_len=0"], ["data.seq_len=0", "integer >= 2"]),
    ("seq_len", ["data.seq_len=1024"], ["data.seq_len=1024", "max_position_embeddings=512", "data.seq_len<=512"]),
    ("row format", ["data.row_format=pakced"], ["data.row_format=pakced", "did you mean data.row_format=packed?"]),
    ("val tokens", ["data.val_tokens=0"], ["data.val_tokens=0", "positive integer"]),
    ("workers", ["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    ("data micro batch", ["data.micro_batch_size=8"], ["data.micro_batch_size=8", "set train.micro_batch_size"]),
    ("data source", ["data.source=foo"], ["data.source=foo", "data=<one of sample, c4, c4_local>"]),
    ("final lr ratio", ["scheduler.min_lr_ratio=2"], ["scheduler.min_lr_ratio=2", "[0, 1]"]),
    # trainer and devices (the machine: 2 CPU cores, 16 GiB)
    ("precision", ["trainer.precision=bf32"], ["trainer.precision=bf32", "32-true, bf16-true"]),
    ("accelerator", ["trainer.accelerator=gpus"], ["trainer.accelerator=gpus", "did you mean trainer.accelerator=gpu?"]),
    ("devices zero", ["trainer.devices=0"], ["trainer.devices=0", "trainer.devices=1"]),
    ("devices text", ["trainer.devices=abc"], ["trainer.devices=abc"]),
    ("more processes than cores", ["strategy=ddp", "trainer.devices=3"],
     ["trainer.devices=3 on CPU", "2 CPU core(s)", "trainer.devices=2 or fewer"]),
    ("nodes", ["trainer.num_nodes=0"], ["trainer.num_nodes=0", "positive integer"]),
    ("stop step text", ["trainer.max_steps=abc"], ["trainer.max_steps=abc"]),
    ("clipping", ["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1", "non-negative"]),
    ("gpu on cpu box", ["trainer=gpu"], ["trainer.accelerator=gpu", "no CUDA GPU", "trainer=cpu"], NO_GPU),
    # the model
    ("heads", ["model.hidden_size=63"], ["model.hidden_size=63", "model.num_attention_heads=4"]),
    ("no heads", ["model.num_attention_heads=0"], ["model.num_attention_heads=0", "positive integer"]),
    ("vocab zero", ["model.vocab_size=0"], ["model.vocab_size=0", "positive integer"]),
    ("7b on a CPU box", ["model=llama_7b", "data.seq_len=128"],
     ["model=llama_7b", "6.74B parameters", "50.2 GiB", "16.0 GiB", "smaller model"]),
]


def _case(case):
    return pytest.param(case[1], case[2], id=case[0], marks=case[3:])


@pytest.mark.parametrize("overrides,expected", [_case(c) for c in CONFIG_CASES])
def test_config_checks(overrides, expected, machine):
    with pytest.raises(UserError) as info:
        check_config(composed(*overrides))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_good_configs_pass(machine):
    for overrides in ([], ["optimizer=scale"], ["optimizer=galore", "optimizer.rank=0"], ["strategy=ddp",
                      "trainer.devices=2", "train.total_batch_size=32"], ["strategy=fsdp", "optimizer=muon"],
                      ["train.max_steps=null", "train.max_tokens=1e6"], ["model=llama_1b", "data.seq_len=128"],
                      ["trainer.precision=bf16-mixed"]):
        check_config(composed(*overrides))


def test_gpu_checks_on_a_one_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=80 * 2**30))
    with pytest.raises(UserError, match=r"trainer.devices=2 but this machine has 1 GPU\(s\): set trainer.devices=1"):
        check_config(composed("trainer=gpu", "trainer.devices=2", "train.total_batch_size=32"))
    with pytest.raises(UserError, match=r"trainer.devices=\[1\] names GPU 1 but this machine has GPUs 0 to 0"):
        check_config(composed("trainer=gpu", "trainer.devices=[1]"))
    with pytest.raises(UserError, match=r"model=llama_7b .* 64-true .* need 100.4 GiB, but each GPU has 80.0 GiB: shard"):
        check_config(composed("trainer=gpu", "model=llama_7b", "trainer.precision=64-true", "data.seq_len=128"))
    check_config(composed("trainer=gpu", "model=llama_7b", "data.seq_len=128"))  # bf16-true: 25 GiB


# --- what Hydra and OmegaConf catch, in run.py's words ------------------------------------------------

HYDRA_CASES = [
    ("optimizer typo", ["optimizer=scal"], ["optimizer=scal names no optimizer config",
                                            "did you mean optimizer=scale?", "optimizer=<one of adafactor, adam, adam_mini"]),
    ("model typo", ["model=llama_60"], ["did you mean model=llama_60m?", "llama_tiny"]),
    ("strategy typo", ["strategy=fdsp"], ["did you mean strategy=fsdp?", "ddp_spawn"]),
    ("data typo", ["data=c5"], ["data=c5", "data=<one of c4, c4_local, sample>"]),
    ("trainer typo", ["trainer=gpux"], ["did you mean trainer=gpu?"]),
    ("logger not offered", ["logger=wandb"], ["logger=wandb", "logger=<one of csv, mlflow, none>"]),
    ("experiment typo", ["experiment=quikstart"], ["did you mean experiment=quickstart?"]),
    ("key typo", ["optimizer.lrr=1"], ["optimizer.lrr=1 names no setting under optimizer",
                                        "did you mean optimizer.lr=1?"]),
    ("train key typo", ["train.max_step=5"], ["did you mean train.max_steps=5?"]),
    ("trainer key typo", ["trainer.devcies=2"], ["did you mean trainer.devices=2?"]),
    ("top-level typo", ["sed=1"], ["sed=1 names no setting at the top level"]),
    ("unfinished list", ["optimizer.betas=[0.9,"], ["'optimizer.betas=[0.9,' cannot be parsed", "key=value"]),
    ("no value", ["optimizer.lr"], ["'optimizer.lr' cannot be parsed", "missing EQUAL"]),
    ("append an existing key", ["+train.max_steps=3"], ["train.max_steps", "++train.max_steps=3"]),
    # values of the wrong type for the schema (optsweep.preflight.schema)
    ("max_steps text", ["train.max_steps=ten"], ["train.max_steps=ten must be an integer",
                                                  "set e.g. train.max_steps=2, or null"]),
    ("total batch fractional", ["train.total_batch_size=4.5"], ["train.total_batch_size=4.5 must be an integer",
                                                                "train.total_batch_size=16"]),
    ("eval interval fractional", ["train.eval_every_n_steps=2.5"],
     ["train.eval_every_n_steps=2.5 must be an integer"]),
    ("train flag", ["train.compile=maybe"], ["train.compile=maybe must be true or false",
                                             "set train.compile=true or train.compile=false"]),
    ("seed", ["seed=abc"], ["seed=abc must be an integer", "seed=42"]),
    ("peak flops text", ["throughput.peak_flops=fast"],
     ["throughput.peak_flops=fast is not a number", "a number, or null"]),
    ("train replaced by a number", ["train=5"],
     ["train=5 cannot replace the settings under train", "e.g. train.total_batch_size="]),
]


@pytest.mark.parametrize("overrides,expected", [pytest.param(*c[1:], id=c[0]) for c in HYDRA_CASES])
def test_hydra_errors_become_one_sentence(overrides, expected):
    with pytest.raises(Exception) as info:  # Hydra's several exception types
        composed(*overrides)
    sentence, status = explain(info.value)
    assert status == 2 and "\n" not in sentence
    for part in expected:
        assert part in sentence, (part, sentence)


def test_unknown_group_option_lists_the_valid_ones():
    for group, value in [("optimizer", "adamx"), ("model", "llama_2m"), ("data", "c5"), ("strategy", "fsdp1")]:
        with pytest.raises(MissingConfigException) as info:
            composed(f"{group}={value}")
        message = str(info.value)
        assert f"Could not find '{group}/{value}'" in message and f"Available options in '{group}'" in message
        valid = {"optimizer": "scale", "model": "llama_60m", "data": "c4_local", "strategy": "ddp"}[group]
        assert valid in explain(info.value)[0]


def test_local_config_file_errors_name_the_file(tmp_path):
    """conf/local/default.yaml is composed onto the same schema: its typos and wrong types are refused too."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "local").mkdir()
    cases = [
        ("# @package _global_\ntrain: {max_step: 5}",
         "local/default.yaml: train.max_step names no setting under train (did you mean train.max_steps?)"),
        ("# @package _global_\nseed: abc", "local/default.yaml: seed=abc must be an integer: set e.g. seed=42"),
        ("logger: {mlflow: {tracking_uri: x}}",
         "local/default.yaml puts its keys under local, which the config does not have: start it with the line"),
    ]
    register_schema()
    for text, expected in cases:
        (conf / "local" / "default.yaml").write_text(text + "\n")
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"), pytest.raises(Exception) as info:
            compose("config")
        sentence, status = explain(info.value)
        assert status == 2 and sentence.startswith(expected), (text, sentence)


def test_value_left_unset():
    cfg = composed("data=c4_local")
    with pytest.raises(Exception) as info:  # OmegaConf's MissingMandatoryValue
        _ = cfg.data.path
    sentence = "data.path has no value (it is ??? in the config): add data.path=<value> to the command line"
    assert explain(info.value) == (sentence, 2)


def test_objects_the_config_cannot_build():
    with pytest.raises(Exception) as info:  # Hydra's InstantiationException
        instantiate({"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "every_n_train_steps": -1})
    sentence, status = explain(info.value)
    assert status == 2 and "every_n_train_steps=-1" in sentence and "ModelCheckpoint" in sentence
    assert explain(PermissionError(13, "Permission denied", "/root/x"))[1] == 2


def test_anything_else_is_a_bug_in_one_line():
    sentence, status = explain(RuntimeError("boom\nsecond line"))
    assert status == 1 and sentence.startswith("RuntimeError: boom second line") and "HYDRA_FULL_ERROR=1" in sentence


def test_multirun_refuses_strategies_that_relaunch_the_script():
    basic = {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}}
    with pytest.raises(UserError, match=r"Hydra multirun cannot train with strategy=ddp: .*use strategy=ddp_spawn"):
        check_multirun(composed("strategy=ddp"), OmegaConf.create({**basic, "runtime": {"choices": {"strategy": "ddp"}}}))
    check_multirun(composed("strategy=ddp_spawn"), OmegaConf.create(basic))
    submitit = {"launcher": {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}}
    check_multirun(composed("strategy=ddp"), OmegaConf.create(submitit))  # each job is its own process


# --- budget, vocabulary, checkpoints, data ----------------------------------------------------------------

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
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"corrupt or not a checkpoint"):
        read_checkpoint_meta(str(text))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, plain)
    with pytest.raises(UserError, match=r"plain.pt is a torch file but not a training checkpoint"):
        read_checkpoint_meta(str(plain))
    with pytest.raises(UserError, match=r"is a folder but not a sharded checkpoint"):
        read_checkpoint_meta(str(tmp_path))
    meta = {"optimizer": "adamw", "model": "llama_tiny", "world_size": 2}
    with pytest.raises(UserError, match=r"model=llama_tiny, not model=llama_60m: resume with model=llama_tiny"):
        check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_60m", world_size=2)
    with pytest.raises(UserError, match=r"optimizer=adamw, not optimizer=scale: resume with optimizer=adamw"):
        check_compatible(meta, "x.ckpt", optimizer="scale", model="llama_tiny", world_size=2)
    with pytest.raises(UserError, match=r"saved by 2 processes but this run has 1.*resume with 2 processes"):
        check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_tiny", world_size=1)
    check_compatible(meta, "x.ckpt", optimizer="adamw", model="llama_tiny", world_size=2)


def test_c4_local_missing_empty_or_a_file(tmp_path):
    with pytest.raises(UserError, match=r"data=c4_local needs the folder"):
        LMDataModule(source="c4_local", path=None)
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path / "missing", tmp_path, tmp_path / "file.txt"):  # absent, without shards, a file
        with pytest.raises(UserError) as info:
            LMDataModule(source="c4_local", path=str(path), tokenizer=str(tmp_path)).shards("train")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "is a file, not a folder" in str(info.value)


def test_sample_never_replaces_user_data(tmp_path):
    """data.path names the sample's cache, rebuilt in place when stale: never over someone's files."""
    folder = tmp_path / "my-corpus"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    text = tmp_path / "notes.txt"
    text.write_text("keep me too")
    for path in (folder, text):
        with pytest.raises(UserError, match=r"already holds something other than the sample corpus"):
            ensure_sample(path)
    assert (folder / "precious.txt").read_text() == "keep me" and text.read_text() == "keep me too"


# --- through run.py: exit code, one `error:` line last, no traceback, nothing opened or moved ------------

def _mlflow_runs(root: Path) -> int:
    db = root / "outputs" / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        return connection.execute("select count(*) from runs").fetchone()[0]


def _cli_cases(tmp: Path) -> list[tuple[str, list[str], dict, int, list[str]]]:
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    return [
        # (name, arguments, environment, exit status, what stderr's last line holds)
        ("unknown optimizer", ["optimizer=adamx"], {}, 2,
         ["error: optimizer=adamx names no optimizer config", "optimizer=<one of adafactor, adam, adam_mini"]),
        ("key typo", ["optimizer.lrr=1"], {}, 2, ["error: optimizer.lrr=1", "did you mean optimizer.lr=1?"]),
        ("wrong type", ["train.max_steps=ten"], {}, 2, ["error: train.max_steps=ten must be an integer"]),
        ("unparsable override", ["optimizer.betas=[0.9,"], {}, 2, ["error: the override", "cannot be parsed"]),
        ("vocab", ["model.vocab_size=100"], {}, 2, ["error: tokenizer sample produces ids up to", "model.vocab_size>="]),
        ("c4_local missing", ["data=c4_local", f"data.path={tmp}/nowhere", "data.tokenizer=t5-base"], {}, 2,
         ["error:", f"{tmp}/nowhere"]),
        ("corrupt checkpoint", [f"train.ckpt_path={garbage}"], {}, 2, ["error: checkpoint", "corrupt"]),
        ("multirun with ddp", ["-m", "strategy=ddp", "trainer.devices=2", "train.total_batch_size=32"], {}, 2,
         ["error: Hydra multirun cannot train with strategy=ddp", "strategy=ddp_spawn"]),
        ("optuna sweep with ddp", ["-m", "sweep=lr_adamw", "strategy=ddp", "trainer.devices=2",
                                   "train.total_batch_size=32"], {}, 2,
         ["error: Hydra multirun cannot train with strategy=ddp", "strategy=ddp_spawn"]),
        ("not a bad input", ["+callbacks.boom._target_=operator.truediv", "+callbacks.boom._args_=[1,0]"], {}, 1,
         ["error: InstantiationException", "ZeroDivisionError", "HYDRA_FULL_ERROR=1"]),
        ("full error asked for", ["optimizer=adamx"], {"HYDRA_FULL_ERROR": "1"}, 1,
         ["MissingConfigException", "Could not find 'optimizer/adamx'"]),
    ]


def test_cli_one_sentence_and_exit_code(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cases = _cli_cases(tmp_path)
    procs = []
    for i, (_, arguments, extra_env, _, _) in enumerate(cases):
        root = tmp_path / str(i)
        # an earlier run's checkpoints, which a refused run must leave where they are
        earlier = root / "outputs" / "checkpoints" / "quickstart" / "adamw-llama_tiny-seed42" / "last.ckpt"
        earlier.parent.mkdir(parents=True)
        earlier.write_bytes(b"earlier")
        flags = [a for a in arguments if a.startswith("-")]
        overrides = [a for a in arguments if not a.startswith("-")]
        cmd = [sys.executable, str(ROOT / "run.py"), *flags, f"paths.data_dir={tmp_path.parent / 'shared-data'}",
               *QUICK, *overrides]
        procs.append(subprocess.Popen(cmd, env={**env, **extra_env, "PROJECT_ROOT": str(root)}, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for i, ((name, _, extra_env, code, expected), proc) in enumerate(zip(cases, procs)):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == code, (name, stderr[-2000:])
        if "HYDRA_FULL_ERROR" in extra_env:
            assert "Traceback" in stderr, (name, stderr[-2000:])
            last = stderr
        else:
            assert "Traceback" not in stderr, (name, stderr[-2000:])
            last = stderr.strip().splitlines()[-1]
        for part in expected:
            assert part in last, (name, part, last)
        root = tmp_path / str(i)
        assert _mlflow_runs(root) == 0, name
        assert (root / "outputs/checkpoints/quickstart/adamw-llama_tiny-seed42/last.ckpt").read_bytes() == b"earlier"
