"""OmegaConf resolvers the config tree uses; registered once, before Hydra composes."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def auto_precision() -> str:
    """The paper's pure-bf16 training on a GPU; fp32 on CPU, where bf16 matmuls are slow."""
    import torch

    return "bf16-true" if torch.cuda.is_available() else "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("optsweep.auto_precision"):
        OmegaConf.register_new_resolver("optsweep.auto_precision", auto_precision)
    if not OmegaConf.has_resolver("optsweep.cwd"):
        # Not ${hydra:runtime.cwd}: that needs Hydra's runtime config, which does not exist yet when the
        # sweeper is built (its storage default lies under paths.root_dir).
        OmegaConf.register_new_resolver("optsweep.cwd", os.getcwd)
