"""OmegaConf resolvers the config tree uses; registered once, before Hydra composes."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")  # NVIDIA's driver, ROCm's


def auto_precision() -> str:
    """The paper's pure-bf16 training on a GPU; fp32 on CPU, where bf16 matmuls are slow. Without a GPU
    driver on the machine CUDA cannot be there, and torch (seconds to import) is not asked."""
    if not any(os.path.exists(path) for path in GPU_DEVICE_FILES):
        return "32-true"
    import torch

    return "bf16-true" if torch.cuda.is_available() else "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("optsweep.auto_precision"):
        OmegaConf.register_new_resolver("optsweep.auto_precision", auto_precision)
    if not OmegaConf.has_resolver("optsweep.cwd"):
        # Not ${hydra:runtime.cwd}: that needs Hydra's runtime config, which does not exist yet when the
        # sweeper is built (its storage default lies under paths.root_dir).
        OmegaConf.register_new_resolver("optsweep.cwd", os.getcwd)
    if not OmegaConf.has_resolver("optsweep.local_artifacts"):
        OmegaConf.register_new_resolver("optsweep.local_artifacts", local_artifact_location)


def local_artifact_location(tracking_uri: str | None) -> str | None:
    """Artifacts beside a local sqlite store (not in ./mlruns of whatever folder the run started from);
    None for a tracking server, which then stores them where it was told to (--artifacts-destination), so
    that every machine can download them."""
    uri = str(tracking_uri or "")
    if not uri.startswith("sqlite:///"):
        return None
    from pathlib import Path

    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
