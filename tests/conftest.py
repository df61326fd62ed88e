"""Shared by the tests: composing the config exactly as run.py does, without running anything.

``compose_config`` is importable (``from conftest import compose_config``) for module-level helpers and
parametrisations; the ``compose`` fixture hands the same function to a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from optsweep.config import register_resolvers
from optsweep.preflight import register_schema

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(*overrides: str, hydra_config: bool = False, sweeps: bool = False) -> DictConfig:
    """conf/config.yaml with ``overrides``; ``hydra_config`` keeps the ``hydra`` node (for ${hydra:...}),
    ``sweeps`` puts sweeps/ on the search path (for ``sweep=<name>``)."""
    register_resolvers()
    register_schema()
    extra = [f"hydra.searchpath=[file://{ROOT / 'sweeps'}]"] if sweeps else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, *extra], return_hydra_config=hydra_config)


@pytest.fixture
def compose():
    return compose_config
