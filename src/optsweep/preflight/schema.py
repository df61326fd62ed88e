"""The schema of conf/config.yaml: the run-level keys and their types, as dataclasses Hydra composes the
config onto (the first entry of its defaults list). A misspelt key (``train.max_step=5``) or a value of the
wrong type (``train.max_steps=ten``) is then refused while Hydra composes, and run.py says so in one
sentence (``optsweep.errors.explain``). The values stay in conf/config.yaml; their ranges, and what one key
implies for another, are checked after composing (``optsweep.preflight.values``).

The config groups (model, data, optimizer, ...) are typed ``Any`` here: each builds an object, and their
keys are checked against that object's arguments (``optsweep.preflight.keys``).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SCHEMA_NAME = "run_schema"  # its entry in conf/config.yaml's defaults list


@dataclass
class TrainConfig:
    total_batch_size: int = MISSING
    """Global sequences per optimizer step; the gradient accumulation is derived from it."""
    micro_batch_size: int = MISSING
    """Sequences per device per forward/backward pass."""
    max_steps: int | None = MISSING
    """Optimizer steps; null to budget by max_tokens instead (exactly one of the two is set)."""
    # Any: OmegaConf has no int-or-float type, and a float field would log 1000000 as 1000000.0
    max_tokens: Any = MISSING
    """Budget in nominal tokens (steps x total_batch_size x seq_len), e.g. 1.3e9; null: by max_steps."""
    warmup_steps: int | None = MISSING
    """Steps of linear warmup; null for warmup_ratio of the steps."""
    warmup_ratio: float | None = MISSING
    """Warmup as a fraction of the steps, used when warmup_steps is null (null: no warmup)."""
    eval_every_n_steps: int = MISSING
    """Optimizer steps between two validations."""
    eval_at_start: bool = MISSING
    """Evaluate the initial model too, so that curves start at step 0."""
    compile: bool = MISSING
    """torch.compile the model."""
    activation_checkpointing: bool = MISSING
    """Recompute activations in the backward pass: less memory for more compute."""
    ckpt_path: str | None = MISSING
    """Resume from this checkpoint, or from `last`, the newest in paths.ckpt_dir; null starts afresh."""


@dataclass
class ThroughputConfig:
    peak_flops: float | None = MISSING
    """Per-device dense bf16 FLOP/s, for MFU; null detects it on H100, H200 and A100."""


@dataclass
class DivergenceConfig:
    check_every_n_steps: int = MISSING
    """Optimizer steps between two checks for a non-finite loss, which stops the run (1: every step, one host
    sync each)."""
    max_skipped_steps: int = MISSING
    """Optimizer steps with a non-finite gradient to skip before stopping (above 0: a host sync a step)."""


@dataclass
class RunConfig:
    # the order of the fields is the order of the composed config (printed by run.py, logged as params)
    task_name: str = MISSING
    """The MLflow experiment the run logs to."""
    seed: int = MISSING
    """Moves the initial weights (through init_seed) and the data order (through data.seed)."""
    init_seed: int | None = MISSING
    """Seed of the weights, dropout and every torch/numpy RNG; null follows seed."""
    train: TrainConfig = field(default_factory=TrainConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    paths: Any = MISSING
    """Where data, checkpoints and logs go (conf/paths/)."""
    model: Any = MISSING
    """The LLaMA's shapes (conf/model/)."""
    data: Any = MISSING
    """The corpus, tokenizer and loader (conf/data/)."""
    optimizer: Any = MISSING
    """The optimizer and its hyperparameters (conf/optimizer/)."""
    scheduler: Any = MISSING
    """The learning-rate schedule (conf/scheduler/)."""
    trainer: Any = MISSING
    """Lightning Trainer arguments: accelerator, devices, precision (conf/trainer/)."""
    strategy: Any = MISSING
    """How several devices share the work (conf/strategy/)."""
    logger: Any = MISSING
    """Where metrics go (conf/logger/)."""
    callbacks: Any = MISSING
    """Lightning callbacks: speed monitor, progress bar, divergence guard, checkpoints (conf/callbacks/)."""


def register_schema() -> None:
    """Store the schema where conf/config.yaml's defaults list finds it; needed before Hydra composes."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
