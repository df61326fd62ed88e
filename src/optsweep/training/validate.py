"""Checks that run before any GPU-hour is spent. Each failure is one sentence: field, value, fix.

Unknown config-group options (``optimizer=adamx``), misspelt keys (``optimizer.lrr=1``) and overrides that
do not parse are Hydra's to catch; run.py turns its report into one sentence (``optsweep.errors.explain``).
What Hydra cannot know is checked here, from the config alone, before data, loggers or checkpoints are
touched:

- keys added with ``+`` that nothing reads, in ``train``/``divergence``/``throughput`` and in every node
  that builds an object (``_target_``: data, model, scheduler, trainer, strategy, callbacks, loggers);
- types and ranges of the run's numbers (batch, steps, warmup, evaluation, data, schedule);
- the trainer: precision, accelerator, devices (against what the machine has), nodes;
- the optimizer: its options, their types (from its ``for_model`` signature) and ranges, and then the
  optimizer itself, built on the model's shapes on the meta device (no memory, milliseconds), so that its
  constructor's own checks fail here rather than inside ``trainer.fit`` after an MLflow run was opened;
- the model: buildable, its sequence length, and whether its weights and gradients can fit at all.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import typing
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from optsweep.errors import UserError, closest, one_line

# torch and the optimizer registry (which imports torch) are imported inside the checks that need them:
# check_values refuses a bad number before those imports cost their seconds
if typing.TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Optimizer fields by the range they must lie in (also any ``<prefix>_lr``, ``<prefix>_eps``, ...); a field
# absent from an optimizer is simply not checked.
_POSITIVE = ("lr", "eps")
_UNIT_INTERVAL = ("momentum", "beta", "beta1", "beta2", "gamma1", "gamma2", "gamma3")
_NON_NEGATIVE = ("weight_decay",)
_POSITIVE_INT = ("ns_steps",)  # Newton-Schulz iterations: SCALE and SWAN refuse 0, Muon would silently skip them
_SECONDARY = ("adam",)  # the auxiliary AdamW of SCALE, Muon, NorMuon, SWAN: adam_lr, adam_betas, adam_eps

# Trainer arguments train.py derives or passes itself: a value under trainer.* would be overridden.
_DERIVED_TRAINER = {
    "accumulate_grad_batches": "set train.total_batch_size and train.micro_batch_size, from which it is derived",
    "val_check_interval": "set train.eval_every_n_steps instead",
    "check_val_every_n_epoch": "set train.eval_every_n_steps instead",
    "max_epochs": "training is counted in steps: set train.max_steps (or trainer.max_steps to stop early)",
    "strategy": "choose strategy=<auto, ddp, ddp_spawn or fsdp> instead",
    "logger": "choose logger=<mlflow, csv or none> instead",
    "callbacks": "edit callbacks.* instead",
    "plugins": "remove it",
    "enable_progress_bar": "remove it",
}
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_PRECISIONS_SHOWN = "32-true, bf16-true, bf16-mixed, 16-mixed, 16-true or 64-true"
_CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


class ConfigError(UserError):
    pass


# --- the whole config --------------------------------------------------------------------------------

def check_values(cfg: DictConfig) -> None:
    """The checks that need neither torch nor Lightning: run.py runs them before importing either."""
    check_train(cfg)
    check_data(cfg)
    check_scheduler(cfg.get("scheduler"))
    check_optimizer_values(cfg.optimizer)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone, before data is read, a model allocated or a
    logger opened (the model and optimizer are built on the meta device: shapes only)."""
    check_sections(cfg)
    check_train(cfg)
    check_data(cfg)
    check_scheduler(cfg.get("scheduler"))
    check_trainer(cfg.trainer)
    check_devices(cfg.trainer)
    check_sequence_length(cfg)
    check_optimizer(cfg.optimizer)
    model = stand_in_model(cfg.model)
    check_optimizer_builds(cfg.optimizer, model)
    check_memory(cfg, model)


def check_multirun(cfg: DictConfig, hydra_cfg) -> None:
    """Under ``-m`` with Hydra's in-process launcher, refuse strategies that relaunch the script (each
    rank would re-run the whole sweep); the Optuna sweeper checks the same before its first trial."""
    from optsweep.sweeper.guards import multirun_blocker

    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if launcher and not launcher.endswith("BasicLauncher"):
        return
    choice = OmegaConf.select(hydra_cfg, "runtime.choices.strategy", default=None)
    blocker = multirun_blocker(cfg, choice)
    if blocker:
        raise ConfigError(blocker.rstrip("."))


# --- keys nothing reads ------------------------------------------------------------------------------

def check_sections(cfg: DictConfig) -> None:
    """A key added with ``+`` that no code reads is a typo the run would silently ignore."""
    for section in ("train", "divergence", "throughput"):
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            _refuse_unknown(section, node, _declared_keys(section) | set(_SCHEMA.get(section, ())))
    for path in ("data", "model", "scheduler", "trainer", "strategy"):
        node = OmegaConf.select(cfg, path)
        if isinstance(node, DictConfig):
            _check_target_keys(path, node)
    for group in ("callbacks", "logger"):
        for key, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig):
                _check_target_keys(f"{group}.{key}", node)
    for key, fix in _DERIVED_TRAINER.items():
        if key in cfg.trainer:
            raise ConfigError(f"trainer.{key}={_show(cfg.trainer, key)} is set by optsweep itself: remove it; {fix}")


_SCHEMA = {
    "train": ("total_batch_size", "micro_batch_size", "max_steps", "max_tokens", "warmup_steps", "warmup_ratio",
              "eval_every_n_steps", "eval_at_start", "compile", "activation_checkpointing", "ckpt_path"),
    "divergence": ("check_every_n_steps", "max_skipped_steps"),
    "throughput": ("peak_flops",),
}


@cache
def _declared_keys(section: str) -> frozenset[str]:
    """The keys conf/config.yaml declares for a plain section (empty when the file is not beside us)."""
    try:
        node = OmegaConf.load(_CONF_DIR / "config.yaml").get(section)
    except (OSError, ValueError):
        return frozenset()
    return frozenset(str(k) for k in node) if isinstance(node, DictConfig) else frozenset()


def _refuse_unknown(path: str, node: DictConfig, known: Iterable[str]) -> None:
    known = set(known)
    for key in node:
        key = str(key)
        if key.startswith("_") or key in known:
            continue
        guess = closest(key, known)
        hint = f"did you mean {path}.{guess}?" if guess else f"its settings are {', '.join(sorted(known))}"
        raise ConfigError(f"{path}.{key}={_show(node, key)} is not a setting of {path} ({hint}): remove it or "
                          "fix its spelling")


def _check_target_keys(path: str, node: DictConfig) -> None:
    """The keys of a node that builds an object must be arguments of that object (unless it takes **kwargs)."""
    target = node.get("_target_")
    if not target:
        return
    parameters = _parameters(str(target))
    if parameters is None:
        return
    skip = {"name", "fsdp"} if path == "strategy" else set()
    _refuse_unknown(path, node, parameters | skip)


@cache
def _parameters(target: str) -> frozenset[str] | None:
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        signature = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - an unimportable target is reported when it is built
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return frozenset(signature.parameters)


# --- the run's numbers -------------------------------------------------------------------------------

def check_train(cfg: DictConfig) -> None:
    t = cfg.train
    _integer(t, "train.total_batch_size", least=1, example=512, note="sequences per optimizer step")
    _integer(t, "train.micro_batch_size", least=1, example=16, note="sequences per device per forward pass")
    max_steps, max_tokens = t.get("max_steps"), t.get("max_tokens")
    _integer(t, "train.max_steps", least=1, example=10000, nullable=True)
    if max_tokens is not None and not (_is_number(max_tokens) and max_tokens > 0):
        raise ConfigError(f"train.max_tokens={max_tokens} must be a positive number of tokens: set e.g. "
                          "train.max_tokens=1.3e9, or train.max_tokens=null to budget by train.max_steps")
    if (max_steps is None) == (max_tokens is None):
        raise ConfigError(f"train.max_steps={_render(max_steps)} and train.max_tokens={_render(max_tokens)}: set "
                          "exactly one of them, "
                          "e.g. train.max_steps=1000 train.max_tokens=null")
    _integer(t, "train.warmup_steps", least=0, example=0, nullable=True)
    ratio = t.get("warmup_ratio")
    if ratio is not None and not (_is_number(ratio) and 0 <= ratio <= 1):
        raise ConfigError(f"train.warmup_ratio={ratio} must lie in [0, 1] (a fraction of the steps): set e.g. "
                          "train.warmup_ratio=0.1")
    warmup = t.get("warmup_steps")
    if warmup is not None and max_steps is not None and warmup > max_steps:
        raise ConfigError(f"train.warmup_steps={warmup} exceeds train.max_steps={max_steps}: set "
                          f"train.warmup_steps<={max_steps} (or null to warm up for train.warmup_ratio of the steps)")
    every = t.get("eval_every_n_steps")
    if not (_is_int(every) and every > 0):
        raise ConfigError(f"train.eval_every_n_steps={every} must be a positive integer of optimizer steps: set "
                          "e.g. train.eval_every_n_steps=1000")
    for key in ("eval_at_start", "compile", "activation_checkpointing"):
        _boolean(t, f"train.{key}")
    ckpt = t.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        raise ConfigError(f"train.ckpt_path={ckpt} must be a checkpoint file or `last`: set e.g. train.ckpt_path=last")
    for key in ("seed", "init_seed"):
        seed = cfg.get(key)
        if key == "init_seed" and seed is None:
            continue  # configs written before init_seed existed: the weights follow `seed`
        if not (_is_int(seed) and 0 <= seed < 2**32):
            raise ConfigError(f"{key}={seed} must be an integer in [0, 2^32): set e.g. {key}=42")
    divergence = cfg.get("divergence")
    if divergence is not None:
        _integer(divergence, "divergence.check_every_n_steps", least=1, example=10)
        _integer(divergence, "divergence.max_skipped_steps", least=0, example=0)
    peak = OmegaConf.select(cfg, "throughput.peak_flops", default=None)
    if peak is not None and not (_is_number(peak) and peak > 0):
        raise ConfigError(f"throughput.peak_flops={peak} must be a positive FLOP/s count: set e.g. "
                          "throughput.peak_flops=989e12, or null to detect it")


def check_data(cfg: DictConfig) -> None:
    from optsweep.data.c4 import SOURCES
    from optsweep.data.rows import ROW_FORMATS

    data = cfg.data
    source = data.get("source")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source} is not a data source: choose data=<one of {', '.join(SOURCES)}>")
    _integer(data, "data.seq_len", least=2, example=256, note="tokens per row")
    _integer(data, "data.val_tokens", least=1, example=10_000_000, note="non-pad validation tokens")
    _integer(data, "data.num_workers", least=0, example=4)
    _integer(data, "data.shuffle_buffer", least=0, example=10_000, note="0 keeps file order")
    _integer(data, "data.val_micro_batch_size", least=1, example=16, nullable=True)
    _one_of("data.row_format", data.get("row_format"), ROW_FORMATS, "a row format",
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


def _one_of(field: str, value, choices, what: str, fix: str) -> None:
    """Refuse a value outside ``choices`` in one sentence, naming the closest valid one where there is one."""
    if value in choices:
        return
    guess = closest(value, [c for c in choices if isinstance(c, str)])
    hint = f" (did you mean {field}={guess}?)" if guess else ""
    raise ConfigError(f"{field}={value} is not {what}{hint}: {fix}")


def check_scheduler(scheduler: DictConfig | None) -> None:
    if scheduler is None:
        return
    ratio = scheduler.get("min_lr_ratio")
    if ratio is not None and not (_is_number(ratio) and 0 <= ratio <= 1):
        raise ConfigError(f"scheduler.min_lr_ratio={ratio} must lie in [0, 1] (the final lr as a fraction of "
                          "optimizer.lr): set e.g. scheduler.min_lr_ratio=0.1")


# --- trainer and devices -----------------------------------------------------------------------------

def check_trainer(trainer: DictConfig) -> None:
    _one_of("trainer.accelerator", trainer.get("accelerator", "auto"), _ACCELERATORS, "an accelerator",
            f"choose trainer=cpu, trainer=gpu or trainer.accelerator=<one of {', '.join(_ACCELERATORS)}>")
    precision = trainer.get("precision")
    valid = _precisions()
    if precision is not None and valid:
        _one_of("trainer.precision", precision, valid, "a precision Lightning knows",
                f"choose trainer.precision=<one of {_PRECISIONS_SHOWN}>")
    devices = trainer.get("devices", "auto")
    if device_count(devices) is None:
        raise ConfigError(f"trainer.devices={devices} must be a positive number of devices, a list of device "
                          "indices or auto: set e.g. trainer.devices=1")
    _integer(trainer, "trainer.num_nodes", least=1, example=1)
    stop = trainer.get("max_steps")
    if stop is not None and stop != -1 and not (_is_int(stop) and stop > 0):
        raise ConfigError(f"trainer.max_steps={stop} must be a positive number of steps to stop after: set e.g. "
                          "trainer.max_steps=100, or null to run the whole budget")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (_is_number(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip} must be a non-negative norm: set e.g. "
                          "trainer.gradient_clip_val=1.0, or null to clip nothing")
    _integer(trainer, "trainer.log_every_n_steps", least=1, example=10)


@lru_cache(maxsize=1)
def _precisions() -> tuple:
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:  # pragma: no cover - another Lightning: let it judge
        return ()
    values = []
    for literal in typing.get_args(_PRECISION_INPUT):
        values.extend(typing.get_args(literal) or (literal,))
    return tuple(values)


def device_count(devices) -> int | None:
    """How many devices on this node a ``trainer.devices`` value asks for; -1 for "all"; None if invalid.
    The one parser of ``trainer.devices``: checks, the world size and the sweeper's guard all read it here."""
    if devices in ("auto", -1, "-1"):
        return -1
    if _is_int(devices):
        return devices if devices > 0 else None
    if isinstance(devices, str):  # "2" (a count), "0,1" or "0," (indices)
        text = devices.strip()
        if text.isdigit():
            return int(text) or None
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "," in text and parts and all(p.isdigit() for p in parts) and len(set(parts)) == len(parts):
            return len(parts)
        return None
    if isinstance(devices, (list, tuple, ListConfig)):
        items = list(devices)
        if items and all(_is_int(d) and d >= 0 for d in items) and len(set(items)) == len(items):
            return len(items)
    return None


def world_size(trainer: DictConfig) -> int:
    """Processes that will train: devices per node (all GPUs for "auto" or -1 on a GPU, else one) x nodes."""
    count = device_count(trainer.get("devices", 1)) or 1
    if count == -1:
        import torch

        count = torch.cuda.device_count() if _on_gpu(trainer) else 1
    return count * int(trainer.get("num_nodes", 1) or 1)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _on_gpu(trainer: DictConfig) -> bool:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_devices(trainer: DictConfig) -> None:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    count = device_count(devices)
    if _on_gpu(trainer):  # gpu/cuda, or auto on a machine with CUDA
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use trainer=cpu"
            )
        if count is not None and count > available:
            raise ConfigError(
                f"trainer.devices={devices} but this machine has {available} GPU(s): "
                f"set trainer.devices={available} or fewer"
            )
        if isinstance(devices, (list, ListConfig)) and max(devices) >= available:
            raise ConfigError(f"trainer.devices={list(devices)} names GPU {max(devices)} but this machine has GPUs "
                              f"0 to {available - 1}: list only those")
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but this machine has no Apple GPU: use trainer=cpu")
    elif accelerator == "tpu":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise ConfigError("trainer.accelerator=tpu but torch_xla is not installed here: use trainer=cpu or "
                              "trainer=gpu") from None
    else:  # CPU: one training process per device
        cores = _usable_cpus()
        if count is not None and count > cores:
            raise ConfigError(
                f"trainer.devices={devices} on CPU starts {count} training processes but this machine has {cores} "
                f"CPU core(s): set trainer.devices={cores} or fewer"
            )


def check_sequence_length(cfg: DictConfig) -> None:
    seq_len = cfg.data.get("seq_len")
    positions = cfg.model.get("max_position_embeddings")
    if seq_len is not None and positions is not None and seq_len > positions:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model {cfg.model.get('name')}'s max_position_embeddings={positions}: "
            f"set data.seq_len<={positions} or raise model.max_position_embeddings"
        )


def check_vocabulary(model_vocab: int | None, max_token_id: int, tokenizer_name: str) -> None:
    """The tokenizer must never produce an id the model has no embedding row for."""
    if model_vocab is not None and max_token_id >= model_vocab:
        raise ConfigError(
            f"tokenizer {tokenizer_name} produces ids up to {max_token_id} but model.vocab_size={model_vocab}: "
            f"set model.vocab_size>={max_token_id + 1} (or null to take the tokenizer's size)"
        )


# --- optimizer ---------------------------------------------------------------------------------------

def check_optimizer(opt: DictConfig) -> None:
    from optsweep.optim.registry import OPTIMIZERS, optimizer_options

    name = opt.get("name")
    if name not in OPTIMIZERS:
        guess = closest(name, OPTIMIZERS)
        hint = f" (did you mean optimizer={guess}?)" if guess else ""
        raise ConfigError(
            f"unknown optimizer '{name}'{hint}: choose optimizer=<one of {', '.join(sorted(OPTIMIZERS))}>"
        )
    allowed = optimizer_options(name)
    given = {k for k in opt if not str(k).startswith("_") and k != "name"}
    unknown = sorted(given - allowed)
    if unknown:
        guess = closest(unknown[0], allowed)
        hint = f"did you mean optimizer.{guess}? " if guess else ""
        raise ConfigError(
            f"optimizer '{name}' has no option '{unknown[0]}': {hint}remove optimizer.{unknown[0]} "
            f"(its options are {', '.join(sorted(allowed))})"
        )
    defaults, types = _option_defaults(name), _option_types(name)
    for key in sorted(given):
        _check_option_type(name, key, opt.get(key), types.get(key), defaults.get(key))
    check_optimizer_ranges(opt, sorted(given), defaults)


def check_optimizer_values(opt: DictConfig) -> None:
    """The range checks of ``check_optimizer`` on the options the optimizer's yaml declares: they need no
    torch, so run.py refuses ``optimizer.lr=-1`` in a second instead of after the heavy imports."""
    path = _CONF_DIR / "optimizer" / f"{opt.get('name')}.yaml"
    if not path.is_file():
        return  # an optimizer outside conf/: check_optimizer checks it after the imports
    declared = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    keys = sorted(k for k in opt if k in declared and not str(k).startswith("_") and k != "name")
    for key in keys:
        if isinstance(declared[key], (float, list)):  # a number or a list: its type is not in doubt
            _check_option_type(opt.get("name"), key, opt.get(key), declared[key], declared[key])
    check_optimizer_ranges(opt, keys, declared)


def check_optimizer_ranges(opt: DictConfig, keys: Iterable[str], defaults: dict) -> None:
    """Each named option within its range (lr and eps positive, betas in [0, 1), ...); a default is the fix shown."""
    for key in keys:
        value = opt.get(key)
        if value is None:
            continue
        prefix, _, suffix = key.partition("_")
        base = suffix if prefix in _SECONDARY else key  # adam_lr is an lr, adam_betas are betas
        if base in _POSITIVE and not (_is_number(value) and value > 0):
            example = defaults.get(key) if _is_number(defaults.get(key)) and defaults.get(key) > 0 else 1e-3
            raise ConfigError(
                f"optimizer.{key}={_render(value)} must be a positive number: set e.g. "
                f"optimizer.{key}={_number(example)}"
            )
        if base in _UNIT_INTERVAL and not (_is_number(value) and 0 <= value < 1):
            raise ConfigError(f"optimizer.{key}={_render(value)} must lie in [0, 1): set e.g. optimizer.{key}=0.9")
        if base == "betas":
            items = _as_list(value)
            example = "[0.9,0.999]"
            if not isinstance(items, list) or len(items) != 2:
                raise ConfigError(f"optimizer.{key}={_render(value)} must be two numbers in [0, 1): set e.g. "
                                  f"optimizer.{key}={example}")
            for i, beta in enumerate(items):
                if not (_is_number(beta) and 0 <= beta < 1):
                    raise ConfigError(
                        f"optimizer.{key}[{i}]={beta} must lie in [0, 1): set e.g. optimizer.{key}={example}"
                    )
        if base in _NON_NEGATIVE and not (_is_number(value) and value >= 0):
            raise ConfigError(f"optimizer.{key}={_render(value)} must be >= 0: set optimizer.{key}=0.0 to disable it")
        if base in _POSITIVE_INT and not (_is_int(value) and value >= 1):
            example = defaults.get(key) if _is_int(defaults.get(key)) else 5
            raise ConfigError(f"optimizer.{key}={_render(value)} must be a positive integer: set e.g. "
                              f"optimizer.{key}={example}")


@cache
def _option_defaults(name: str) -> dict:
    from optsweep.optim.registry import option_parameters

    return {p: v.default for p, v in option_parameters(name).items() if v.default is not inspect.Parameter.empty}


@cache
def _option_types(name: str) -> dict:
    """A value of each option's type: its default, or for a ``None`` default one of the type its annotation
    names (``fused: bool | None = None`` -> False); None where the type is not that simple."""
    from optsweep.optim.registry import option_parameters

    stand_ins = {"bool": False, "int": 0, "float": 0.0, "str": ""}
    types = {}
    for p, v in option_parameters(name).items():
        if v.default is inspect.Parameter.empty:
            continue
        types[p] = v.default
        if v.default is None:
            annotation = v.annotation if isinstance(v.annotation, str) else getattr(v.annotation, "__name__", "")
            kinds = {k.strip() for k in re.sub(r"Optional\[(.*)\]", r"\1", str(annotation)).split("|")} - {"None"}
            types[p] = stand_ins.get(kinds.pop()) if len(kinds) == 1 else None
    return types


def _check_option_type(name: str, key: str, value, default, example_default) -> None:
    """The type an option's default has (bool, int, number, text, list) is the type its value must have."""
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = _is_int(value), "an integer"
    elif isinstance(default, float):
        ok, kind = _is_number(value), "a finite number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a word"
    elif isinstance(default, (tuple, list)):
        ok, kind = isinstance(_as_list(value), list), f"a list like {_render(default)}"
    else:
        return
    if not ok:
        example = _number(example_default) if isinstance(example_default, float) else _render(example_default)
        raise ConfigError(f"optimizer.{key}={_render(value)} must be {kind} for optimizer {name}: set e.g. "
                          f"optimizer.{key}={example}")


def check_optimizer_builds(opt: DictConfig, model: torch.nn.Module | None) -> None:
    """Build the optimizer on the model's shapes (meta device): its constructor's checks fail here, now."""
    from optsweep.optim.registry import optimizer_factory, optimizer_options

    if model is None:
        return
    name = opt.get("name")
    try:
        factory = optimizer_factory(opt)
        factory(model=model)
    except UserError:
        raise
    except (ValueError, TypeError, AssertionError) as error:
        cause = error.__cause__ if type(error).__name__ == "InstantiationException" and error.__cause__ else error
        message = one_line(cause)
        options = sorted(optimizer_options(name), key=len, reverse=True)
        named = next((k for k in options if re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", message)),
                     None)
        if named is not None and named in opt:
            raise ConfigError(f"optimizer.{named}={_show(opt, named)} is refused by optimizer {name} ({message}): "
                              f"change optimizer.{named}") from None
        raise ConfigError(f"optimizer {name} refuses its settings ({message}): change the optimizer.* value it "
                          "names") from None
    except Exception as error:  # noqa: BLE001 - e.g. an op the meta device lacks: the real run will tell
        log.debug("optimizer %s could not be tried on the meta device: %r", name, error)


# --- model -------------------------------------------------------------------------------------------

def stand_in_model(model_cfg: DictConfig) -> torch.nn.Module | None:
    """The configured LLaMA on the meta device (shapes only), or a sentence saying why it cannot be built."""
    from hydra.utils import instantiate

    from optsweep.models.llama import build_llama

    name = model_cfg.get("name")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        if key in model_cfg:
            _integer(model_cfg, f"model.{key}", least=1, example=_render(_model_default(key)))
    _integer(model_cfg, "model.vocab_size", least=1, example=32000, nullable=True)
    _integer(model_cfg, "model.num_key_value_heads", least=1, example=model_cfg.get("num_attention_heads"),
             nullable=True)
    heads = model_cfg.get("num_attention_heads")
    hidden = model_cfg.get("hidden_size")
    if hidden is not None and heads and hidden % heads:
        raise ConfigError(f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads}: "
                          "choose a hidden size that is a multiple of the head count")
    kv_heads = model_cfg.get("num_key_value_heads")
    if kv_heads and heads and heads % kv_heads:
        raise ConfigError(f"model.num_key_value_heads={kv_heads} does not divide model.num_attention_heads={heads}: "
                          "choose a divisor, or null for one key/value head per attention head")
    try:
        spec = instantiate(model_cfg)
        return build_llama(spec, vocab_size=spec.vocab_size or 32000, device="meta")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the shapes break is the config's doing
        cause = error.__cause__ or error
        raise ConfigError(f"model={name} cannot be built ({one_line(cause)}): fix the model.* setting it names") \
            from None


def _model_default(key: str):
    return {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
            "max_position_embeddings": 1024}.get(key, 1)


_BYTES_PER_PARAMETER = {"64": 8, "32": 4, "16": 2}


def _bytes_per_parameter(precision) -> int:
    """Bytes of one weight as stored: true half precisions store 2, mixed ones keep fp32 weights."""
    text = str(precision)
    if text.endswith("-true"):
        return 2 if text.startswith(("16", "bf16")) else _BYTES_PER_PARAMETER.get(text.split("-")[0], 4)
    if text in ("64",):
        return 8
    return 4


def check_memory(cfg: DictConfig, model: torch.nn.Module | None) -> None:
    """Refuse a model whose weights and gradients alone exceed the memory it would train in (a lower bound:
    optimizer states and activations come on top); warn when Adam-like states would not fit either."""
    import torch

    if model is None:
        return
    trainer = cfg.trainer
    parameters = sum(p.numel() for p in model.parameters())
    per_weight = _bytes_per_parameter(trainer.get("precision"))
    sharded = cfg.strategy.get("name") == "fsdp"
    if _on_gpu(trainer):
        if not torch.cuda.is_available():
            return
        memory = torch.cuda.get_device_properties(0).total_memory
        world = world_size(trainer)
        need = 2 * per_weight * parameters / (world if sharded else 1)
        where = "each GPU has"
        fix = ("shard it with strategy=fsdp over more GPUs, use trainer.precision=bf16-true, or choose a smaller "
               "model")
    elif str(trainer.get("accelerator", "auto")) in ("cpu", "auto"):
        memory = _physical_memory()
        if memory is None:
            return
        per_node = device_count(trainer.get("devices", 1)) or 1
        processes = 1 if per_node == -1 else per_node  # on CPU "auto" is one process
        need = 2 * per_weight * parameters * (1 if sharded else processes)
        where = "this machine has"
        fix = "choose a smaller model (e.g. model=llama_60m), or train on GPUs with trainer=gpu"
    else:
        return
    gib = 2**30
    name = cfg.model.get("name")
    if need > memory:
        raise ConfigError(
            f"model={name} has {parameters / 1e9:.2f}B parameters whose {trainer.get('precision')} weights and "
            f"gradients alone need {need / gib:.1f} GiB, but {where} {memory / gib:.1f} GiB: {fix}"
        )
    if 2 * need > memory:
        log.warning("model=%s: weights, gradients and Adam-like optimizer states need about %.1f GiB, and %s "
                    "%.1f GiB; the run may run out of memory", name, 2 * need / gib, where, memory / gib)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


# --- helpers -----------------------------------------------------------------------------------------

def _integer(node: DictConfig, path: str, least: int, example, nullable: bool = False, note: str = "") -> None:
    key = path.rsplit(".", 1)[-1]
    if key not in node:
        return
    value = node.get(key)
    if value is None and nullable:
        return
    if not (_is_int(value) and value >= least):
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        about = f" ({note})" if note else ""
        null = ", or null" if nullable else ""
        raise ConfigError(f"{path}={_render(value)} must be {what}{about}: set e.g. {path}={example}{null}")


def _boolean(node: DictConfig, path: str) -> None:
    key = path.rsplit(".", 1)[-1]
    value = node.get(key)
    if key in node and not isinstance(value, bool):
        raise ConfigError(f"{path}={_render(value)} must be true or false: set {path}=true or {path}=false")


def _show(node: DictConfig, key: str):
    try:
        return _render(node.get(key))
    except Exception:  # noqa: BLE001 - an unresolvable value is still worth naming
        return OmegaConf.to_container(node, resolve=False).get(key)


def _render(value) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def _number(x: float) -> str:
    """1e-3 rather than 0.001: how learning rates are written on command lines."""
    if x and abs(x) < 1e-2:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_list(value):
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, tuple):
        value = list(value)
    return value
