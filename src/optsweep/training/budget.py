"""Batch and step arithmetic: global batch -> gradient accumulation, token budget -> steps, warmup."""

from __future__ import annotations

import math
from dataclasses import dataclass

from optsweep.errors import UserError


class BudgetError(UserError):
    """A batch or step budget that cannot be realised; the message names the fields and the fix."""


@dataclass(frozen=True)
class Budget:
    total_batch_size: int  # global sequences per optimizer step
    micro_batch_size: int  # sequences per device per forward/backward
    world_size: int
    accumulate_grad_batches: int
    max_steps: int  # optimizer steps
    warmup_steps: int
    seq_len: int

    @property
    def tokens_per_step(self) -> int:
        """Nominal tokens per optimizer step (padding included, as the paper's token column counts)."""
        return self.total_batch_size * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.max_steps * self.tokens_per_step


def resolve_budget(
    total_batch_size: int,
    micro_batch_size: int,
    world_size: int,
    seq_len: int,
    max_steps: int | None = None,
    max_tokens: int | None = None,
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
) -> Budget:
    if micro_batch_size <= 0 or total_batch_size <= 0:
        raise BudgetError(
            f"train.total_batch_size={total_batch_size} and train.micro_batch_size={micro_batch_size} "
            "must both be positive"
        )
    per_step = micro_batch_size * world_size
    if total_batch_size % per_step:
        raise BudgetError(
            f"train.total_batch_size={total_batch_size} is not divisible by train.micro_batch_size "
            f"({micro_batch_size}) x world size ({world_size}) = {per_step}: choose a total batch that is a "
            f"multiple of {per_step} (e.g. {max(per_step, total_batch_size // per_step * per_step)}) or "
            "another micro batch"
        )
    accumulate = total_batch_size // per_step
    if (max_steps is None) == (max_tokens is None):
        raise BudgetError(
            "set exactly one of train.max_steps and train.max_tokens "
            f"(got max_steps={max_steps}, max_tokens={max_tokens})"
        )
    if max_steps is None:
        max_steps = math.ceil(max_tokens / (total_batch_size * seq_len))
    if max_steps <= 0:
        raise BudgetError(f"train.max_steps={max_steps} must be positive")
    if warmup_steps is None:
        warmup_steps = round((warmup_ratio or 0.0) * max_steps)
    if not 0 <= warmup_steps <= max_steps:
        raise BudgetError(
            f"train.warmup_steps={warmup_steps} must lie between 0 and train.max_steps={max_steps}"
        )
    return Budget(total_batch_size, micro_batch_size, world_size, accumulate, max_steps, warmup_steps, seq_len)
