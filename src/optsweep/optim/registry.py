"""Name -> optimizer class. The optimizers are the files of ``conf/optimizer/``: ``<name>.yaml`` is built from
the one optimizer class in ``optsweep/optim/<name>.py`` (``SHARED_MODULES`` lists the few that share a
file). Every class offers ``for_model(model, **hyperparameters)``, which splits the model's parameters
through :mod:`optsweep.optim.groups` and returns a ready ``torch.optim.Optimizer``. A new optimizer is one
``.py`` and one ``.yaml``.

Classes are imported lazily so that choosing one optimizer never imports the others.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from optsweep.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[3] / "conf" / "optimizer"
# optimizers that share a file, "module:Class"
SHARED_MODULES = {
    "apollo": "optsweep.optim.apollo:APOLLO",
    "adamw": "optsweep.optim.torch_optim:AdamW",
    "adam": "optsweep.optim.torch_optim:Adam",
    "sgd": "optsweep.optim.torch_optim:SGD",
    "apollo_mini": "optsweep.optim.apollo:APOLLOMini",
}
# name -> "module:Class", or "module" alone where the class is the module's one optimizer
OPTIMIZERS: dict[str, str] = {path.stem: SHARED_MODULES.get(path.stem, f"optsweep.optim.{path.stem}")
                              for path in sorted(CONF_DIR.glob("*.yaml"))}


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
    module_name, _, class_name = OPTIMIZERS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise UnknownOptimizerError(f"conf/optimizer/{name}.yaml has no optimizer file: write "
                                    f"src/optsweep/optim/{name}.py with its optimizer class") from None
    if class_name:
        return getattr(module, class_name)
    found = [obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module_name
             and issubclass(obj, torch.optim.Optimizer) and hasattr(obj, "for_model")]
    if len(found) != 1:
        raise UnknownOptimizerError(
            f"src/optsweep/optim/{name}.py defines {len(found)} optimizer classes with for_model, not one: "
            f"keep one there, or name it in SHARED_MODULES of optsweep/optim/registry.py")
    return found[0]


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
