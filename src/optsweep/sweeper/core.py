"""The sweep loop: Optuna asks -> Hydra overrides -> the launcher runs the job -> the result is told.

Rules the loop keeps (sweeps/README.md says the same for users):
- The study lives in `storage` under `study_name` (default: the command's overrides), so running the same
  command again continues it. `n_trials` is the number of finished trials (COMPLETE, PRUNED or FAIL) the
  study should reach; a worker starts a trial only while finished + running < n_trials.
- A trial that raises, or returns NaN/inf, is told FAIL with `failure_reason` as a user attribute; the sweep
  goes on. After `max_consecutive_errors` raising trials in a row this worker stops (that is a bug).
- A pruned trial (optuna.TrialPruned from the pruning callback) is told PRUNED.
- Trials are created by the storage (`study.ask()`), so workers sharing a storage never run the same trial.
  A trial left RUNNING by a worker that died (its process is gone on this machine, or its heartbeat is older
  than grace_period) is put back in the queue (WAITING) and runs again, with the same number and params.
  The sweeper that took a trial is its user attribute `sweeper`; the process that trained it, `worker`
  (the same process under Hydra's basic launcher, the job's under submitit or joblib).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import traceback
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from optsweep import errors, services
from optsweep.paths import CONF_DIR
from optsweep.preflight import multirun
from optsweep.sweeper import attrs as attr_names
from optsweep.sweeper import context, replicates
from optsweep.sweeper.context import machine as _machine
from optsweep.sweeper.mlflow_parent import SweepRun
from optsweep.sweeper.search_space import SearchSpace, SweepConfigError
from optsweep.sweeper.study import absolute_url, create_or_load, default_study_name, open_storage, retrying
from optsweep.sweeper.trials import FINISHED, Heartbeat, objective_values, why_interrupted

log = logging.getLogger(__name__)

class OptunaSweep:
    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, study_name: str | None,
                 storage: str | None, n_trials: int, n_jobs: int, params: DictConfig | None,
                 variants: DictConfig | None, mlflow: DictConfig, heartbeat_interval: int | None,
                 grace_period: int | None, max_consecutive_errors: int,
                 replicates: DictConfig | None = None) -> None:
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.direction = OmegaConf.to_container(direction) if OmegaConf.is_list(direction) else direction
        self.study_name = study_name
        self.storage_url = storage
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.params = OmegaConf.to_container(params, resolve=True) if params is not None else None
        self.variants = OmegaConf.to_container(variants, resolve=True) if variants is not None else None
        self.mlflow_cfg = mlflow
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_consecutive_errors = max_consecutive_errors
        self.replicates = OmegaConf.to_container(replicates, resolve=True) if replicates is not None else {}
        self.machine, self.pid = _machine(), os.getpid()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.in_process = type(self.launcher).__name__ == "BasicLauncher"

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> dict[str, Any]:
        if multirun.relaunched_child():
            raise RuntimeError("this process is a relaunched training rank, not a sweeper: "
                               + (multirun.multirun_blocker(self.config) or "use strategy=ddp_spawn for sweeps"))
        if self.in_process:
            blocker = multirun.multirun_blocker(
                self.config, OmegaConf.select(self.config, "hydra.runtime.choices.strategy", default=None))
            if blocker:
                raise SweepConfigError(blocker)

        space, passthrough = SearchSpace.build(self.params, self.variants, arguments)
        left_fixed = space.left_fixed_rates(self._optimizer_options)
        if left_fixed:
            key, name = left_fixed[0]
            raise SweepConfigError(
                f"the sweep tunes optimizer.lr but leaves optimizer.{key} of {name} fixed, a learning rate that "
                f"moves weights too: tune it as well ('optimizer.{key}=tag(log, interval(<low>, <high>))'), tie "
                f"it to lr (optimizer.{key}=null) or use {name}'s own sweep in sweeps/sweep/")
        study_name = self.study_name or default_study_name(arguments)
        self.grid = space.grid() if self.sampler_cfg._target_.endswith("GridSampler") else None
        if self.grid:
            sampler = instantiate(self.sampler_cfg, search_space=self.grid)
            # GridSampler.after_trial calls study.stop() once the grid is done, which raises outside
            # study.optimize(); this loop checks the grid itself (_grid_taken)
            sampler.after_trial = lambda *args, **kwargs: None
        else:
            sampler = instantiate(self.sampler_cfg)
        # A fixed seed would make every worker draw the same points: reseed per trial number instead (the
        # grid's and QMC's seed fixes their order, which all workers must share).
        target = self.sampler_cfg._target_
        self.reseed = self.sampler_cfg.get("seed") is not None and not target.endswith(("GridSampler", "QMCSampler"))
        if self.n_trials is None:  # a grid runs whole unless told otherwise
            self.n_trials = math.prod(len(v) for v in self.grid.values()) if self.grid else 20
        elif self.grid and self.n_trials < math.prod(len(v) for v in self.grid.values()):
            log.warning("n_trials=%d runs only part of the %d-point grid (leave n_trials unset for all of it)",
                        self.n_trials, math.prod(len(v) for v in self.grid.values()))
        pruner = instantiate(self.pruner_cfg)
        directions = self.direction if isinstance(self.direction, list) else [self.direction]
        # an unreachable storage or tracking server: one sentence in seconds, before any trial
        services.check_storage_url(self.storage_url)
        services.check_tracking_uri(self.mlflow_cfg.get("tracking_uri"), "hydra.sweeper.mlflow.tracking_uri")
        storage = open_storage(self.storage_url)
        study, created = retrying(lambda: create_or_load(study_name, storage, sampler, pruner, directions),
                                  "creating the study")
        log.info("study %r in %s: %d trials so far, target n_trials=%d", study_name, self.storage_url,
                 len(study.trials), self.n_trials)
        for key, expression in space.describe().items():
            log.info("  %s: %s", key, expression)

        self.parent = SweepRun.open(self.mlflow_cfg.get("tracking_uri"), self.mlflow_cfg.get("experiment_name"),
                                    study, created, space.describe())
        parent_id = self.parent.run_id if self.parent else None
        saved_env = os.environ.get(context.SWEEP_ENV)
        os.environ[context.SWEEP_ENV] = context.sweep_environment(
            absolute_url(self.storage_url), study_name, OmegaConf.to_container(self.pruner_cfg, resolve=True),
            parent_id)
        try:
            self._loop(study, study_name, space, passthrough, parent_id, self.n_trials, search=True)
            if int(self.replicates.get("top_k") or 0) > 0:
                self._replicate(study, study_name, space, passthrough, parent_id, storage, directions)
        except BaseException:
            if self.parent is not None:
                self.parent.stopped()
            raise
        finally:
            if saved_env is None:
                os.environ.pop(context.SWEEP_ENV, None)
            else:
                os.environ[context.SWEEP_ENV] = saved_env
        return self._summarize(study, study_name)

    def _replicate(self, search: optuna.Study, study_name: str, space: SearchSpace, passthrough: list[str],
                   parent_id: str | None, storage: Any, directions: list[str]) -> None:
        """Rerun the best configurations on new seeds, in the replicate study (enqueued once, then resumed)."""
        top_k = int(self.replicates["top_k"])
        seeds = replicates.seeds_for(self.replicates.get("seeds", 3),
                                     int(OmegaConf.select(self.config, "seed", default=0) or 0))
        name = replicates.replicate_study_name(study_name)
        study = retrying(lambda: optuna.create_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
            directions=directions, load_if_exists=True), "creating the replicate study")
        wanted = replicates.plan(search.get_trials(deepcopy=False), top_k, seeds)
        done = replicates.already_planned(study.get_trials(deepcopy=False))
        for item in wanted:
            if (item.of, item.seed) not in done:
                study.enqueue_trial(item.params, user_attrs={replicates.REPLICATE_ATTR: True,
                                                             replicates.REPLICATE_OF_ATTR: item.of,
                                                             replicates.SEED_ATTR: item.seed})
        total = len(study.get_trials(deepcopy=False))
        log.info("replicates: the best %d configuration(s) per variant on seeds %s: %d trial(s) in study %r",
                 top_k, seeds, total, name)
        # the search's own `seed=` override gives way to each replicate's seed
        kept = [a for a in passthrough if a.split("=", 1)[0].lstrip("+") != "seed"]
        self._loop(study, name, space, kept, parent_id, total, search=False)
        self.replicate_results = {
            "study": name,
            "trials": [{"replicate_of": t.user_attrs.get(replicates.REPLICATE_OF_ATTR),
                        "seed": t.user_attrs.get(replicates.SEED_ATTR), "state": t.state.name,
                        "value": t.value if t.state == TrialState.COMPLETE else None}
                       for t in study.get_trials(deepcopy=False)],
        }

    def _loop(self, study: optuna.Study, study_name: str, space: SearchSpace, passthrough: list[str],
              parent_id: str | None, n_trials: int, search: bool) -> None:
        errors_in_a_row = 0
        while True:
            self._requeue_interrupted(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            free = n_trials - finished - running
            if free <= 0:
                log.info("%s=%d reached (%d finished, %d running elsewhere)",
                         "n_trials" if search else "replicates", n_trials, finished, running)
                return
            if search and self.grid is not None and self._grid_taken(trials):
                log.info("the grid is exhausted (%d points)", math.prod(len(v) for v in self.grid.values()))
                return
            batch = self._ask(study, min(self.n_jobs, free), n_trials)
            if not batch:
                return
            results = self._run_batch(study, study_name, space, passthrough, parent_id, batch, search)
            for raised in results:
                errors_in_a_row = errors_in_a_row + 1 if raised else 0
            if errors_in_a_row >= self.max_consecutive_errors:
                raise RuntimeError(
                    f"{errors_in_a_row} trials in a row raised (see their failure_reason); stopping this worker. "
                    "Fix the cause and rerun: finished trials are kept, and count towards n_trials.")

    def _ask(self, study: optuna.Study, count: int, n_trials: int) -> list[optuna.Trial]:
        batch = []
        for _ in range(count):
            trial = study.ask()
            # claim it for this sweeper before anything else can go wrong (the job names its own process)
            trial.set_user_attr(attr_names.SWEEPER_ATTR, {"machine": self.machine, "pid": self.pid})
            trial.set_user_attr("heartbeat", time.time())
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
            if finished + ahead >= n_trials:
                # another worker took the last slot at the same moment: leave this one for a later run
                study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                log.info("trial %d is beyond n_trials (another worker was faster): left WAITING",
                         trial.number)
                break
            batch.append(trial)
        return batch

    def _grid_taken(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        size = math.prod(len(v) for v in self.grid.values())
        taken = {t.system_attrs["grid_id"] for t in trials
                 if "grid_id" in t.system_attrs and (t.state in FINISHED or t.state == TrialState.RUNNING)}
        waiting = any(t.state == TrialState.WAITING for t in trials)
        return len(taken) >= size and not waiting

    # ------------------------------------------------------------------ one batch of jobs
    def _run_batch(self, study: optuna.Study, study_name: str, space: SearchSpace, passthrough: list[str],
                   parent_id: str | None, batch: list[optuna.Trial], search: bool = True) -> list[bool]:
        """Run the trials, tell the results; returns, per trial, whether it raised."""
        raised: dict[int, bool] = {}
        jobs: list[tuple[optuna.Trial, list[str]]] = []
        for trial in batch:
            try:
                if self.reseed and search:
                    study.sampler = instantiate(self.sampler_cfg, seed=self.sampler_cfg.seed + trial.number)
                overrides = passthrough + space.suggest(trial)
                if not search:  # a replicate: the winner's params (enqueued, fixed) on its own seed
                    overrides.append(f"seed={trial.user_attrs[replicates.SEED_ATTR]}")
                trial.set_user_attr("overrides", overrides)
                self._check_composes(overrides)
            except Exception as error:  # noqa: BLE001 - a bad point in the space fails only its trial
                raised[trial.number] = True
                self._finish(study, trial, TrialState.FAIL, None, f"config: {type(error).__name__}: {error}")
                continue
            job = overrides + [f"++hydra.job.env_set.{context.TRIAL_ENV}={trial._trial_id}"]
            jobs.append((trial, job))
        if not jobs:
            return list(raised.values())

        for trial, job in jobs:
            log.info("trial %d: %s", trial.number, " ".join(job[len(passthrough):-1]))
        with ExitStack() as stack:
            for trial, _ in jobs:
                stack.enter_context(context.activate(context.TrialContext(trial, study_name, parent_id)))
            stack.enter_context(Heartbeat(study, [t._trial_id for t, _ in jobs], self.heartbeat_interval))
            try:
                returns = self.launcher.launch([job for _, job in jobs], initial_job_idx=jobs[0][0].number)
            except BaseException as interrupt:
                # Ctrl-C, SystemExit from Lightning's interrupt handling, a launcher crash: the trials
                # did not finish; queue them again so the next run repeats them
                for trial, _ in jobs:
                    self._requeue(study, study._storage.get_trial(trial._trial_id),
                                  f"interrupted: {type(interrupt).__name__}")
                raise
        stopped_by = None
        unreachable = None
        for (trial, _), ret in zip(jobs, returns, strict=True):
            error = ret._return_value if ret.status == JobStatus.FAILED else None
            error = errors.tracking_server_lost(error) or error if error is not None else None
            if isinstance(error, errors.ServiceUnreachableError):
                # the tracking server went away: not the trial's fault; it waits for the next run (and
                # resumes from its checkpoints when it got far enough to write one)
                self._requeue(study, study._storage.get_trial(trial._trial_id), f"tracking server: {error}")
                unreachable = error
                continue
            if isinstance(getattr(error, "signum", None), int):
                # training stopped on SIGTERM/SIGINT (after saving its checkpoint): not a result; the trial
                # waits for the next run of the command, which resumes it
                self._requeue(study, study._storage.get_trial(trial._trial_id), f"interrupted: {error}")
                stopped_by = error.signum
                continue
            raised[trial.number] = self._tell(study, trial, ret)
        if stopped_by is not None:
            log.warning("sweep stopped by %s: run the same command again to continue it",
                        signal.Signals(stopped_by).name)
            raise SystemExit(128 + stopped_by)
        if unreachable is not None:
            raise errors.ServiceUnreachableError(
                f"{unreachable}; the sweep stopped (its unstarted trials wait): run the same command again to continue it")
        return list(raised.values())

    def _optimizer_options(self, name: str | None) -> dict[str, Any]:
        """The options of optimizer ``name`` as conf/optimizer/ sets them; None: this run's composed optimizer.
        Unresolved (an interpolation such as ``total_T: ${train.max_steps}`` stays text)."""
        if name is None:
            node = OmegaConf.select(self.config, "optimizer", default=None)
            return OmegaConf.to_container(node) if isinstance(node, DictConfig) else {}
        path = CONF_DIR / "optimizer" / f"{name}.yaml"
        return OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}

    def _check_composes(self, overrides: list[str]) -> None:
        composed = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        if self.in_process:
            blocker = multirun.multirun_blocker(
                composed, OmegaConf.select(composed, "hydra.runtime.choices.strategy", default=None))
            if blocker:
                raise SweepConfigError(blocker)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> bool:
        """Record one job's outcome; True when the job raised."""
        output_dir = OmegaConf.select(ret.hydra_cfg or {}, "hydra.runtime.output_dir", default=None)
        if output_dir:
            trial.set_user_attr("job_dir", str(output_dir))
        attrs = trial.user_attrs
        if ret.status == JobStatus.COMPLETED:
            values, problem = objective_values(ret.return_value, len(study.directions))
            if problem is None:
                self._finish(study, trial, TrialState.COMPLETE, values, None)
            else:
                self._finish(study, trial, TrialState.FAIL, None, attrs.get(attr_names.FAILURE_ATTR) or problem)
            return False
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned) or attr_names.PRUNED_ATTR in attrs:
            self._finish(study, trial, TrialState.PRUNED, None, None)
            return False
        trial.set_user_attr("traceback", "".join(traceback.format_exception(error))[-4000:])
        reason = attrs.get(attr_names.FAILURE_ATTR) or f"{type(error).__name__}: {error}"[:2000]
        self._finish(study, trial, TrialState.FAIL, None, reason)
        return True

    def _finish(self, study: optuna.Study, trial: optuna.Trial, state: TrialState,
                values: list[float] | None, reason: str | None) -> None:
        if reason is not None:
            trial.set_user_attr(attr_names.FAILURE_ATTR, reason)
        run_id = trial.user_attrs.get(attr_names.RUN_ID_ATTR)
        frozen = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        shown = f"value={values[0] if len(values or []) == 1 else values}" if values else (reason or "")
        log.info("trial %d %s %s", frozen.number, frozen.state.name, shown)
        if self.parent is not None:
            self.parent.finish_child(run_id, frozen.number, frozen.state.name,
                                     frozen.values[0] if frozen.values else None, frozen.params, reason,
                                     was_interrupted=bool(frozen.user_attrs.get("interruptions")),
                                     study=study.study_name,
                                     extra_tags=context.replicate_tags(frozen.user_attrs))

    # ------------------------------------------------------------------ dead workers
    def _requeue_interrupted(self, study: optuna.Study) -> None:
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            why = why_interrupted(trial, self.machine, self.pid, self.grace_period, now)
            if why:
                self._requeue(study, trial, why)

    def _requeue(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str) -> None:
        """Back to WAITING: the next ask() (here or in another worker) repeats it with the same params."""
        try:
            history = list(trial.user_attrs.get("interruptions", [])) + [why]
            study._storage.set_trial_user_attr(trial._trial_id, "interruptions", history)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker finished it meanwhile
        log.warning("trial %d %s: queued again", trial.number, why)
        if self.parent is not None:
            self.parent.mark_interrupted(trial.number, why, study=study.study_name)

    # ------------------------------------------------------------------ end of the sweep
    def _summarize(self, study: optuna.Study, study_name: str) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        counted_at = time.time()
        counts = Counter(t.state.name for t in trials)
        results: dict[str, Any] = {"name": "optuna", "study": study_name, "storage": self.storage_url,
                                   "trials": dict(counts)}
        best = None
        if counts.get("COMPLETE"):
            if len(study.directions) == 1:
                best = study.best_trial
                results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            else:
                results["best_trials"] = [{"number": t.number, "values": t.values, "params": t.params}
                                          for t in study.best_trials]
        log.info("study %r: %s; best: %s", study_name, dict(counts),
                 results.get("best_params", results.get("best_trials")))
        if getattr(self, "replicate_results", None):
            results["replicates"] = self.replicate_results
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        if self.parent is not None:
            # every state, zeros too: a count that dropped to 0 must not keep its last non-zero value
            self.parent.summarize({state.name: counts.get(state.name, 0) for state in TrialState}, best,
                                  counts.get("RUNNING", 0), counted_at)
        return results
