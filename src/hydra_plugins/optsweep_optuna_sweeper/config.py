"""Config schema of `hydra/sweeper=optuna`, field for field the official hydra-optuna-sweeper's where they
overlap (sampler, direction, storage, study_name, n_trials, n_jobs, params), plus pruner, variants, MLflow
and the knobs that keep a long sweep alive (heartbeat, max_consecutive_errors)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

PROVIDER = "optsweep"


@dataclass
class SamplerConfig:
    _target_: str = MISSING
    seed: int | None = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    # with multivariate, group=True lets TPE model conditional spaces (see `variants`) jointly
    group: bool = False
    # pending trials of other workers count as bad guesses, so parallel workers spread out
    constant_liar: bool = True


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    sigma0: float | None = None
    n_startup_trials: int = 1
    restart_strategy: str | None = None
    use_separable_cma: bool = False
    consider_pruned_trials: bool = False


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The grid is built from the sweep's params (every one a choice or range, or a variant)."""

    _target_: str = "optuna.samplers.GridSampler"
    # workers on one storage must shuffle the grid identically: keep a fixed seed
    seed: int | None = 0


@dataclass
class MedianPrunerConfig:
    _target_: str = "optuna.pruners.MedianPruner"
    # trials that finish before pruning starts: the median needs a few complete curves
    n_startup_trials: int = 5
    # steps are trainer.global_step: no pruning before this many optimizer steps
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    # resources are trainer.global_step values: min_resource ~ the first validation step
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MlflowConfig:
    """Where the sweep's parent run goes; the trials' child runs are opened by the training code.

    The defaults read the project's MLflow logger config; with no MLflow logger both are null and the
    sweep runs without a parent run."""

    tracking_uri: str | None = "${oc.select:logger.mlflow.tracking_uri,null}"
    experiment_name: str | None = "${oc.select:logger.mlflow.experiment_name,null}"


@dataclass
class ReplicatesConfig:
    """After n_trials, rerun the best `top_k` configurations of each variant on new seeds (0: none)."""

    top_k: int = 0
    # a count of new seeds (seed + 1 ... seed + n, `seed` being the search's), or a list of seeds
    seeds: Any = 3


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.optsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # the sweeper instantiates sampler and pruner itself (the grid sampler needs the search space)
    _recursive_: bool = False

    sampler: Any = MISSING
    pruner: Any = MISSING
    # "minimize" / "maximize", or a list of them when the task returns several objectives
    direction: Any = "minimize"
    # null: derived from the command's overrides, so the same command continues the same study
    study_name: str | None = None
    storage: str | None = "sqlite:///${oc.select:paths.root_dir,.}/outputs/optuna.db"
    # target number of finished trials in the study (COMPLETE + PRUNED + FAIL), not trials per run;
    # null: the whole grid with the grid sampler, 20 otherwise
    n_trials: int | None = None
    # trials handed to the launcher at once; the basic launcher runs them one after the other
    n_jobs: int = 1
    # override key -> value: a fixed value, or choice(...), range(...), interval(a,b),
    # int(interval(a,b)), tag(log, interval(a,b)) for the search space
    params: dict[str, Any] | None = None
    # name -> {override key -> value}: a categorical "variant" picks one bundle of overrides, whose values
    # may themselves be search-space expressions (a conditional search space)
    variants: dict[str, Any] | None = None
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # seconds between "still alive" marks of a running trial; a trial without one for grace_period
    # seconds is marked interrupted and its configuration is queued again (workers on other machines)
    heartbeat_interval: int | None = 60
    grace_period: int | None = 600
    # stop this worker after this many trials in a row raised (a bug, not a bad hyperparameter)
    max_consecutive_errors: int = 5
    replicates: ReplicatesConfig = field(default_factory=ReplicatesConfig)


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=PROVIDER)
for _name, _node in {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "qmc": QMCSamplerConfig,
    "grid": GridSamplerConfig,
}.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider=PROVIDER)
for _name, _node in {
    "median": MedianPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "none": NopPrunerConfig,
}.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider=PROVIDER)
