"""Name -> optimizer class. Each optimizer is one file under ``optsweep.optim`` and one yaml under
``conf/optimizer/``; every class offers ``for_model(model, **hyperparameters)``, which splits the model's
parameters through :mod:`optsweep.optim.groups` and returns a ready ``torch.optim.Optimizer``.

Classes are imported lazily so that choosing one optimizer never imports the others.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from optsweep.errors import UserError

OPTIMIZERS: dict[str, str] = {
    "adamw": "optsweep.optim.torch_optim:AdamW",
    "adam": "optsweep.optim.torch_optim:Adam",
    "sgd": "optsweep.optim.torch_optim:SGD",
    "scale": "optsweep.optim.scale:SCALE",
    "stable_spam": "optsweep.optim.stable_spam:StableSPAM",
    "muon": "optsweep.optim.muon:Muon",
    "galore": "optsweep.optim.galore:GaLore",
    "fira": "optsweep.optim.fira:Fira",
    "swan": "optsweep.optim.swan:SWAN",
    "apollo": "optsweep.optim.apollo:APOLLO",
    "apollo_mini": "optsweep.optim.apollo:APOLLOMini",
    "adafactor": "optsweep.optim.adafactor:Adafactor",
    "lion": "optsweep.optim.lion:Lion",
    "ademamix": "optsweep.optim.ademamix:AdEMAMix",
    "adam_mini": "optsweep.optim.adam_mini:AdamMini",
    "soap": "optsweep.optim.soap:SOAP",
    "normuon": "optsweep.optim.normuon:NorMuon",
}


class UnknownOptimizerError(UserError):
    pass


class UnknownOptionError(UserError):
    pass


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if name not in OPTIMIZERS:
        raise UnknownOptimizerError(
            f"unknown optimizer '{name}': choose one of {', '.join(sorted(OPTIMIZERS))} "
            f"(e.g. optimizer=scale)"
        )
    module_name, class_name = OPTIMIZERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def optimizer_options(name: str) -> set[str]:
    """The hyperparameters ``for_model`` of this optimizer accepts (used to reject typos early)."""
    signature = inspect.signature(optimizer_class(name).for_model)
    return {p for p in signature.parameters if p not in ("cls", "model")}


def build_optimizer(model: nn.Module, name: str, **hyperparameters) -> torch.optim.Optimizer:
    """What ``conf/optimizer/*.yaml`` instantiates (as a partial, completed with the model)."""
    cls = optimizer_class(name)
    unknown = set(hyperparameters) - optimizer_options(name)
    if unknown:
        raise UnknownOptionError(
            f"optimizer '{name}' has no option {', '.join(sorted(unknown))}: "
            f"its options are {', '.join(sorted(optimizer_options(name)))}"
        )
    return cls.for_model(model, **hyperparameters)
