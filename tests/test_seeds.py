"""What `seed` moves: the weights (init_seed) and the data order (data.seed) follow it unless set."""

from __future__ import annotations

import pytest
from conftest import compose_config


def composed(*overrides: str):
    return compose_config("experiment=quickstart", *overrides)


def test_both_seeds_follow_seed_unless_pinned():
    cfg = composed("seed=3")
    assert (cfg.seed, cfg.init_seed, cfg.data.seed) == (3, 3, 3)
    cfg = composed("seed=3", "init_seed=0")
    assert (cfg.init_seed, cfg.data.seed) == (0, 3)  # only the data order moves with seed
    cfg = composed("seed=3", "data.seed=0")
    assert (cfg.init_seed, cfg.data.seed) == (3, 0)  # only the weights move with seed


class _Seeded(Exception):
    pass


def test_training_seeds_the_weights_with_init_seed(monkeypatch):
    """train() seeds every RNG the model is initialised from with init_seed, before building anything."""
    import lightning

    from optsweep.training import train as train_module

    seen = []

    def record(seed, workers=False):
        seen.append(seed)
        raise _Seeded

    monkeypatch.setattr(lightning, "seed_everything", record)
    for overrides in (["seed=3"], ["seed=3", "init_seed=11"]):
        with pytest.raises(_Seeded):
            train_module.train(composed(*overrides, "logger=none"))
    assert seen == [3, 11]
