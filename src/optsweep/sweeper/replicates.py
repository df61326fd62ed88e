"""Which configurations a sweep replicates, and on which seeds.

After the search, the best ``top_k`` configurations of each variant (each optimizer in a study over several;
the whole study otherwise) are rerun on new seeds. The reruns are trials of a second study beside the search
(``<study> [replicates]``), enqueued with the winner's exact parameters: they resume like any trial, and the
search's sampler never sees them, so a lucky seed cannot steer the search. Each replicate trial carries the
user attributes ``replicate`` (true), ``replicate_of`` (the search trial's number) and ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from optsweep.sweeper.attrs import REPLICATE_ATTR, REPLICATE_OF_ATTR
from optsweep.sweeper.search_space import VARIANT, SweepConfigError

__all__ = ["REPLICATE_ATTR", "REPLICATE_OF_ATTR", "SEED_ATTR", "plan", "seeds_for"]
SEED_ATTR = "seed"


def replicate_study_name(study_name: str) -> str:
    return f"{study_name} [replicates]"


def seeds_for(seeds: int | Sequence[int], base_seed: int) -> list[int]:
    """``seeds`` new seeds: base + 1 ... base + n for a count, or the list as given."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepConfigError(f"hydra.sweeper.replicates.seeds={seeds} must be >= 1 (a count of new seeds) "
                                   "or a list of seeds: set e.g. hydra.sweeper.replicates.seeds=3")
        return [base_seed + i for i in range(1, seeds + 1)]
    chosen = [int(s) for s in seeds]
    if not chosen or len(set(chosen)) != len(chosen) or base_seed in chosen:
        raise SweepConfigError(f"hydra.sweeper.replicates.seeds={list(seeds)} must be distinct seeds other than the "
                               f"search's seed {base_seed}: set e.g. hydra.sweeper.replicates.seeds=[1,2,3]")
    return chosen


@dataclass(frozen=True)
class Replicate:
    of: int  # the search trial's number
    params: dict[str, Any]
    seed: int


def plan(trials: Sequence[FrozenTrial], top_k: int, seeds: Sequence[int]) -> list[Replicate]:
    """The best ``top_k`` COMPLETE trials per variant (lowest value; first objective), each on every seed."""
    groups: dict[Any, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.values and math.isfinite(trial.values[0]):
            groups.setdefault(trial.params.get(VARIANT), []).append(trial)
    chosen = []
    for variant in sorted(groups, key=str):
        best = sorted(groups[variant], key=lambda t: (t.values[0], t.number))[:top_k]
        chosen += [Replicate(t.number, dict(t.params), seed) for t in best for seed in seeds]
    return chosen


def already_planned(trials: Sequence[FrozenTrial]) -> set[tuple[int, int]]:
    return {(t.user_attrs.get(REPLICATE_OF_ATTR), t.user_attrs.get(SEED_ATTR)) for t in trials}
