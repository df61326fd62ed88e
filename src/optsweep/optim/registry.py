"""Name -> optimizer class. The optimizers are the files of ``conf/optimizer/``: each ``<name>.yaml`` targets
its class's constructor directly (``_target_: optsweep.optim.<module>.<Class>.for_model``, ``_partial_: true``,
``name: <name>``, its options), so a new optimizer is one ``.py`` and one ``.yaml``. ``for_model(model,
**options)`` splits the model's parameters through :mod:`optsweep.optim.groups` and returns a ready
``torch.optim.Optimizer``.

Classes are imported lazily so that choosing one optimizer never imports the others.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path

import yaml

from optsweep.errors import UserError
from optsweep.paths import CONF_DIR

OPTIMIZER_CONF = CONF_DIR / "optimizer"
FACTORY = ".for_model"


def _class_path(yaml_file: Path) -> str:
    """"module:Class" from the yaml's ``_target_`` (``<module>.<Class>.for_model``)."""
    target = str((yaml.safe_load(yaml_file.read_text()) or {}).get("_target_", ""))
    module_and_class = target.removesuffix(FACTORY)
    module, _, class_name = module_and_class.rpartition(".")
    return f"{module}:{class_name}" if target.endswith(FACTORY) and module else target


# name -> "module:Class", read from each yaml's _target_
OPTIMIZERS: dict[str, str] = {path.stem: _class_path(path) for path in sorted(OPTIMIZER_CONF.glob("*.yaml"))}


class UnknownOptimizerError(UserError):
    pass


class UnknownOptionError(UserError):
    pass


def optimizer_class(name: str):
    """The optimizer class ``conf/optimizer/<name>.yaml`` builds (imported now)."""
    if name not in OPTIMIZERS:
        raise UnknownOptimizerError(
            f"unknown optimizer '{name}': choose one of {', '.join(sorted(OPTIMIZERS))} "
            f"(e.g. optimizer=scale)"
        )
    module_name, _, class_name = OPTIMIZERS[name].partition(":")
    if not class_name:
        raise UnknownOptimizerError(f"conf/optimizer/{name}.yaml must target its class's constructor: set "
                                    f"_target_: optsweep.optim.{name}.<Class>{FACTORY}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise UnknownOptimizerError(f"conf/optimizer/{name}.yaml targets {module_name}, which does not exist: "
                                    f"write src/{module_name.replace('.', '/')}.py with its optimizer class"
                                    ) from None
    if not hasattr(module, class_name):
        raise UnknownOptimizerError(f"conf/optimizer/{name}.yaml targets {class_name}, which {module_name} "
                                    f"does not define: fix its _target_")
    return getattr(module, class_name)


def option_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The options of optimizer ``name`` with their defaults: ``for_model``'s own and, where it passes
    ``**options`` on, the constructor's (so each default is written once)."""
    cls = optimizer_class(name)
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    own = inspect.signature(cls.for_model).parameters
    options = {k: p for k, p in own.items() if k != "model" and p.kind not in variadic}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        constructor = inspect.signature(cls.__init__).parameters
        options |= {k: p for k, p in constructor.items()
                    if k not in ("self", "params") and p.kind not in variadic and k not in options}
    return options


def optimizer_options(name: str) -> set[str]:
    """The hyperparameters optimizer ``name`` accepts (used to reject typos early)."""
    return set(option_parameters(name))


def build_optimizer(model, name: str, **hyperparameters):
    """Optimizer ``name`` over ``model`` with the given options (the yaml's defaults are not read)."""
    cls = optimizer_class(name)
    unknown = set(hyperparameters) - optimizer_options(name)
    if unknown:
        raise UnknownOptionError(
            f"optimizer '{name}' has no option {', '.join(sorted(unknown))}: "
            f"its options are {', '.join(sorted(optimizer_options(name)))}"
        )
    return cls.for_model(model, **hyperparameters)


def optimizer_factory(node: Mapping):
    """What training calls with ``model=``: the ``optimizer`` config node built as a partial, without
    ``name`` (the platform's label for it, not an option)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    options.pop("name", None)
    return instantiate(options)
