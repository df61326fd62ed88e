"""The run's numbers within their ranges, and what one implies for another: budget, warmup, evaluation,
seeds, divergence, data and schedule. The schema has already refused a value of the wrong type in the
typed sections (train, throughput, divergence, the seeds); the data and scheduler groups are untyped, so
their types are checked here too. None of this imports torch."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from optsweep.errors import ConfigError, render
from optsweep.preflight.fields import is_number, require_integer, require_one_of


def check_train(cfg: DictConfig) -> None:
    t = cfg.train
    require_integer(t, "train.total_batch_size", least=1, example=512, note="sequences per optimizer step")
    require_integer(t, "train.micro_batch_size", least=1, example=16, note="sequences per device per forward pass")
    max_steps, max_tokens = t.get("max_steps"), t.get("max_tokens")
    require_integer(t, "train.max_steps", least=1, example=10000, nullable=True)
    if max_tokens is not None and not (is_number(max_tokens) and max_tokens > 0):
        raise ConfigError(f"train.max_tokens={max_tokens} must be a positive number of tokens: set e.g. "
                          "train.max_tokens=1.3e9, or train.max_tokens=null to budget by train.max_steps")
    if (max_steps is None) == (max_tokens is None):
        raise ConfigError(f"train.max_steps={render(max_steps)} and train.max_tokens={render(max_tokens)}: set "
                          "exactly one of them, e.g. train.max_steps=1000 train.max_tokens=null")
    require_integer(t, "train.warmup_steps", least=0, example=0, nullable=True)
    ratio = t.get("warmup_ratio")
    if ratio is not None and not (is_number(ratio) and 0 <= ratio <= 1):
        raise ConfigError(f"train.warmup_ratio={ratio} must lie in [0, 1] (a fraction of the steps): set e.g. "
                          "train.warmup_ratio=0.1")
    warmup = t.get("warmup_steps")
    if warmup is not None and max_steps is not None and warmup > max_steps:
        raise ConfigError(f"train.warmup_steps={warmup} exceeds train.max_steps={max_steps}: set "
                          f"train.warmup_steps<={max_steps} (or null to warm up for train.warmup_ratio of the steps)")
    if t.get("eval_every_n_steps") < 1:
        raise ConfigError(f"train.eval_every_n_steps={t.get('eval_every_n_steps')} must be a positive integer of "
                          "optimizer steps: set e.g. train.eval_every_n_steps=1000")
    for key in ("seed", "init_seed"):
        seed = cfg.get(key)
        if key == "init_seed" and seed is None:
            continue  # configs written before init_seed existed: the weights follow `seed`
        if not 0 <= seed < 2**32:
            raise ConfigError(f"{key}={seed} must be an integer in [0, 2^32): set e.g. {key}=42")
    require_integer(cfg.divergence, "divergence.check_every_n_steps", least=1, example=10)
    require_integer(cfg.divergence, "divergence.max_skipped_steps", least=0, example=0)
    peak = OmegaConf.select(cfg, "throughput.peak_flops", default=None)
    if peak is not None and not (is_number(peak) and peak > 0):
        raise ConfigError(f"throughput.peak_flops={peak} must be a positive FLOP/s count: set e.g. "
                          "throughput.peak_flops=989e12, or null to detect it")


def check_data(cfg: DictConfig) -> None:
    from optsweep.data.c4 import SOURCES
    from optsweep.data.rows import ROW_FORMATS

    data = cfg.data
    source = data.get("source")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source} is not a data source: choose data=<one of {', '.join(SOURCES)}>")
    require_integer(data, "data.seq_len", least=2, example=256, note="tokens per row")
    require_integer(data, "data.val_tokens", least=1, example=10_000_000, note="non-pad validation tokens")
    require_integer(data, "data.num_workers", least=0, example=4)
    require_integer(data, "data.shuffle_buffer", least=0, example=10_000, note="0 keeps file order")
    require_integer(data, "data.val_micro_batch_size", least=1, example=16, nullable=True)
    require_one_of("data.row_format", data.get("row_format"), ROW_FORMATS, "a row format",
                   f"choose data.row_format=<one of {', '.join(ROW_FORMATS)}>")
    micro = data.get("micro_batch_size")
    if micro != cfg.train.micro_batch_size:
        raise ConfigError(f"data.micro_batch_size={micro} differs from train.micro_batch_size="
                          f"{cfg.train.micro_batch_size}, from which the accumulation is derived: set "
                          "train.micro_batch_size instead")
    for key in ("path", "tokenizer"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"data.{key}={value} must be a path or a name: quote it, e.g. data.{key}='{value}'")


def check_scheduler(scheduler: DictConfig | None) -> None:
    if scheduler is None:
        return
    ratio = scheduler.get("min_lr_ratio")
    if ratio is not None and not (is_number(ratio) and 0 <= ratio <= 1):
        raise ConfigError(f"scheduler.min_lr_ratio={ratio} must lie in [0, 1] (the final lr as a fraction of "
                          "optimizer.lr): set e.g. scheduler.min_lr_ratio=0.1")
