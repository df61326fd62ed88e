"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (stepped once per optimizer step).

Each schedule is a small callable object (not a lambda) so the scheduler's state_dict pickles and a resumed
run continues the same curve. Every param group's own lr is multiplied by the same factor, so secondary
learning rates (SCALE's adam_lr, Muon's AdamW lr) follow the schedule as ``lr_group * f(t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def decay_progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """How far the decay after warmup has gone: 0 at its start, 1 at ``total_steps`` and after."""
    return min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))


@dataclass
class WarmupCosine:
    """The paper's schedule (GaLore's ``cosine`` with min ratio): linear warmup from 0 to 1 over
    ``warmup_steps``, then cosine from 1 down to ``min_lr_ratio`` at ``total_steps``."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * decay_progress(step, self.warmup_steps, self.total_steps)))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


@dataclass
class WarmupLinear(WarmupCosine):
    """Linear warmup, then linear decay to ``min_lr_ratio`` at ``total_steps``."""

    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return 1.0 - (1.0 - self.min_lr_ratio) * decay_progress(step, self.warmup_steps, self.total_steps)


@dataclass
class WarmupConstant:
    """Linear warmup, then the base lr for the rest of the run."""

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return 1.0
