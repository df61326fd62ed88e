"""The optimizers are the files of conf/optimizer/; each is built from the one optimizer class of
optsweep/optim/<name>.py, so a new optimizer is one .py and one .yaml."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim import registry
from optsweep.report import memory

ROOT = Path(__file__).resolve().parents[1]
SIGNUM = '''
import torch

class Signum(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.9):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @classmethod
    def for_model(cls, model, lr: float = 1e-3, momentum: float = 0.9):
        return cls(model.parameters(), lr=lr, momentum=momentum)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                p.add_(buf.sign(), alpha=-group["lr"])
'''


def test_the_set_of_optimizers_is_the_config_folder():
    assert sorted(registry.OPTIMIZERS) == sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml"))


@pytest.fixture
def signum(monkeypatch, tmp_path):
    """optsweep/optim/signum.py and its registry entry, as if just written (the file lives in tmp_path)."""
    (tmp_path / "signum.py").write_text(SIGNUM)
    spec = importlib.util.spec_from_file_location("optsweep.optim.signum", tmp_path / "signum.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(registry.OPTIMIZERS, "signum", module.__name__)
    return module


def test_a_new_optimizer_is_its_file(signum):
    assert registry.optimizer_class("signum") is signum.Signum
    assert registry.optimizer_options("signum") == {"lr", "momentum"}
    model = build_llama(ModelSpec(name="t", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, vocab_size=32))
    optimizer = registry.build_optimizer(model, "signum", lr=1e-2)
    x = torch.randint(0, 32, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    before = model.lm_head.weight.detach().clone()
    optimizer.step()
    assert torch.allclose((model.lm_head.weight - before).abs(), torch.full_like(before, 1e-2))
    with pytest.raises(registry.UnknownOptionError, match="optimizer 'signum' has no option beta"):
        registry.build_optimizer(model, "signum", beta=0.5)


def test_a_new_optimizer_is_in_the_memory_report(signum, tmp_path):
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (conf / "optimizer" / "signum.yaml").write_text(
        "_target_: optsweep.optim.build_optimizer\n_partial_: true\nname: signum\nlr: 1.0e-3\n")
    (row,) = memory.memory_rows(["signum"], ["llama_60m"], conf_dir=conf)
    assert row.measured_gb == pytest.approx(2 * row.params * 2 / 1e9, rel=1e-3)  # weights + one buffer, bf16


def test_a_file_with_two_optimizers_must_say_which(monkeypatch, signum):
    signum.Other = type("Other", (signum.Signum,), {"__module__": signum.__name__})
    with pytest.raises(registry.UnknownOptimizerError, match="defines 2 optimizer classes"):
        registry.optimizer_class("signum")
