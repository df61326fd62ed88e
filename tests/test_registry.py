"""The optimizers are the files of conf/optimizer/; each yaml targets its class's ``for_model`` directly, so a
new optimizer is one .py and one .yaml."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

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


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "optimizer").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_yaml_targets_its_class_and_lists_every_option(path):
    config = yaml.safe_load(path.read_text())
    module, cls, factory = config["_target_"].rsplit(".", 2)
    assert (factory, config["_partial_"], config["name"]) == ("for_model", True, path.stem)
    assert registry.optimizer_class(path.stem).__name__ == cls and module.startswith("optsweep.optim.")
    assert set(config) - {"_target_", "_partial_", "name"} == registry.optimizer_options(path.stem)


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "optimizer").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_optimizer_factory_survives_pickling(path):
    """strategy=ddp_spawn sends the factory to its worker processes by pickle, which finds a classmethod by
    its name on the class: a for_model borrowed from another name fails there, and only there."""
    config = {k: v for k, v in yaml.safe_load(path.read_text()).items() if not str(v).startswith("${")}
    factory = registry.optimizer_factory(config)  # interpolations (total_T: ${train.max_steps}) left out
    again = pickle.loads(pickle.dumps(factory))
    assert again.func == factory.func and again.keywords == factory.keywords


@pytest.fixture
def signum(monkeypatch, tmp_path):
    """optsweep/optim/signum.py and its registry entry, as if just written (the file lives in tmp_path)."""
    (tmp_path / "signum.py").write_text(SIGNUM)
    spec = importlib.util.spec_from_file_location("optsweep.optim.signum", tmp_path / "signum.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(registry.OPTIMIZERS, "signum", f"{module.__name__}:Signum")
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
        "_target_: optsweep.optim.signum.Signum.for_model\n_partial_: true\nname: signum\nlr: 1.0e-3\n"
        "momentum: 0.9\n")
    (row,) = memory.memory_rows(["signum"], ["llama_60m"], conf_dir=conf)
    assert row.measured_gb == pytest.approx(2 * row.params * 2 / 1e9, rel=1e-3)  # weights + one buffer, bf16


def test_a_yaml_naming_a_missing_class_or_file_says_which(monkeypatch, signum):
    monkeypatch.setitem(registry.OPTIMIZERS, "signum", f"{signum.__name__}:Signom")
    with pytest.raises(registry.UnknownOptimizerError, match="targets Signom, which optsweep.optim.signum does not"):
        registry.optimizer_class("signum")
    monkeypatch.setitem(registry.OPTIMIZERS, "signum", "optsweep.optim.signom:Signum")
    with pytest.raises(registry.UnknownOptimizerError, match="write src/optsweep/optim/signom.py"):
        registry.optimizer_class("signum")


def test_options_passed_on_to_the_constructor_are_options_with_its_defaults():
    """Muon's for_model names only lr and adam_lr and passes the rest to Muon(...): both are its options."""
    options = registry.option_parameters("muon")
    assert options["adam_lr"].default is None and options["momentum"].default == 0.95
    assert options["adam_betas"].default == (0.9, 0.95) and "params" not in options and "options" not in options
