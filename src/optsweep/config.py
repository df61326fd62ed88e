"""OmegaConf resolvers the config tree uses; registered once, before Hydra composes."""

from __future__ import annotations

from omegaconf import OmegaConf


def auto_precision() -> str:
    """The paper's pure-bf16 training on a GPU; fp32 on CPU, where bf16 matmuls are slow."""
    import torch

    return "bf16-true" if torch.cuda.is_available() else "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("optsweep.auto_precision"):
        OmegaConf.register_new_resolver("optsweep.auto_precision", auto_precision)
