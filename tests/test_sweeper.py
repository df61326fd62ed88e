"""The Optuna sweeper: search-space parsing and guards in-process; whole sweeps as subprocesses.

The subprocess tests drive tests/_sweep_app/app.py, a Hydra app laid out like run.py (a `sweep` config
group on the search path) whose objective is (x - 0.3)^2 + y and which can raise, diverge, sleep, or train
a one-parameter Lightning model under the pruning callback. The storages are read back with optuna, the
MLflow store with plain sqlite3 (an independent reader). The last test drives run.py itself.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import compose_config
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, TrialState

from optsweep.preflight import multirun
from optsweep.sweeper.search_space import SearchSpace, parse_param
from optsweep.sweeper.study import default_study_name
from optsweep.sweeper.trials import objective_values

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "_sweep_app" / "app.py"


# ---------------------------------------------------------------------------------------------- helpers
def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTSWEEP_")}
    env.update(TOY_ROOT=str(root), TOY_SWEEPS=str(APP.parent / "sweeps"), HYDRA_FULL_ERROR="1",
               PYTHONUNBUFFERED="1")
    return env


def toy_sweep(root: Path, *overrides: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), "-m", "sweep=toy", *overrides], env=_env(root),
                          capture_output=True, text=True, timeout=timeout, check=False)


def toy_popen(root: Path, *overrides: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(APP), "-m", "sweep=toy", *overrides], env=_env(root),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def the_study(root: Path) -> optuna.Study:
    storage = f"sqlite:///{root}/outputs/optuna.db"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def mlflow_runs(root: Path) -> list[dict]:
    """Active runs with their status and tags, read straight from MLflow's sqlite tables."""
    with sqlite3.connect(root / "outputs" / "mlflow.db") as db:
        runs = db.execute("select run_uuid, status from runs where lifecycle_stage = 'active'").fetchall()
        tags = db.execute("select run_uuid, key, value from tags").fetchall()
    by_run = {run: {"status": status, "tags": {}} for run, status in runs}
    for run, key, value in tags:
        if run in by_run:
            by_run[run]["tags"][key] = value
    return [{"id": run, **info} for run, info in by_run.items()]


def parent_and_children(root: Path) -> tuple[dict, list[dict]]:
    runs = mlflow_runs(root)
    parents = [r for r in runs if r["tags"].get("optuna.role") == "sweep"]
    assert len(parents) == 1, [r["tags"] for r in parents]
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parents[0]["id"]]
    assert len(children) == len(runs) - 1, "every other run is a child of the sweep's run"
    return parents[0], sorted(children, key=lambda r: int(r["tags"]["optuna.trial"]))


def toy_objective(params: dict) -> float:
    return (params["x"] - 0.3) ** 2 + params["y"]


# ---------------------------------------------------------------------------------------------- search space
def test_override_grammar_becomes_optuna_distributions():
    assert parse_param("lr", "tag(log, interval(1e-4, 1e-2))").distribution == FloatDistribution(
        1e-4, 1e-2, log=True)
    assert parse_param("m", "interval(0.5, 0.99)").distribution == FloatDistribution(0.5, 0.99)
    assert parse_param("n", "int(interval(1, 8))").distribution == IntDistribution(1, 8)
    assert parse_param("r", "range(1, 9, 2)").distribution == IntDistribution(1, 7, step=2)
    assert parse_param("o", "choice(adamw, sgd)").distribution == CategoricalDistribution(["adamw", "sgd"])
    assert parse_param("o", "adamw,sgd").distribution == CategoricalDistribution(["adamw", "sgd"])
    fixed = parse_param("optimizer.momentum_on", "none")
    assert fixed.distribution is None and fixed.fixed == "none"
    assert parse_param("w", 0.9).fixed == "0.9" and parse_param("b", True).fixed == "true"


def test_trial_values_become_overrides_with_conditional_variants():
    space, passthrough = SearchSpace.build(
        {"x": "interval(0, 1)", "trainer.max_steps": 10},
        {"adamw": {"optimizer": "adamw", "optimizer.lr": "tag(log, interval(1e-4, 1e-2))"},
         "sgd": {"optimizer": "sgd", "optimizer.lr": "tag(log, interval(1e-3, 1.0))"}},
        ["experiment=quickstart", "y=choice(0, 1)"],
    )
    assert passthrough == ["experiment=quickstart"]
    trial = FixedTrial({"x": 0.25, "y": 1, "variant": "sgd", "optimizer.lr:sgd": 0.5})
    assert space.suggest(trial) == ["x=0.25", "trainer.max_steps=10", "y=1", "optimizer=sgd",
                                    "optimizer.lr=0.5"]
    # the other variant's range is never sampled in an sgd trial
    assert "optimizer.lr:adamw" not in trial.params


def test_grid_and_clashes():
    space, _ = SearchSpace.build({"a": "choice(1, 2)", "b": "range(0, 3)"},
                                 {"v1": {"c": "x"}, "v2": {"c": "y"}}, [])
    assert space.grid() == {"a": [1, 2], "b": [0, 1, 2], "variant": ["v1", "v2"]}
    continuous, _ = SearchSpace.build({"a": "interval(0, 1)"}, None, [])
    with pytest.raises(ValueError, match="grid sampler cannot enumerate"):
        continuous.grid()
    with pytest.raises(ValueError, match="sets \\['a'\\]"):
        SearchSpace.build({"a": "choice(1, 2)"}, {"v": {"a": 3}}, [])


def test_study_name_ignores_override_order_and_objective_values_are_checked():
    assert default_study_name(["b=1", "a=2"]) == default_study_name(["a=2", "b=1"]) == "a=2 b=1"
    assert objective_values(1.5, 1) == ([1.5], None)
    assert objective_values(math.nan, 1)[1] == "objective is nan (diverged)"
    assert objective_values(math.inf, 1)[1] == "objective is inf (diverged)"
    assert "not a number" in objective_values("oops", 1)[1]
    assert "2 values for 1 objective" in objective_values([1.0, 2.0], 1)[1]


def test_strategies_that_relaunch_the_script_are_refused():
    from omegaconf import OmegaConf

    def blocker(strategy, devices=1):
        return multirun.multirun_blocker(OmegaConf.create({"strategy": strategy, "trainer": {"devices": devices}}))

    ddp = "lightning.pytorch.strategies.DDPStrategy"
    assert "use strategy=ddp_spawn" in blocker({"_target_": ddp, "name": "ddp"})
    assert blocker({"_target_": ddp, "name": "ddp_spawn", "start_method": "spawn"}, devices=2) is None
    assert blocker({"_target_": "lightning.pytorch.strategies.ModelParallelStrategy", "name": "fsdp"})
    project_fsdp = OmegaConf.load(REPO / "conf" / "strategy" / "fsdp.yaml")  # the project's FSDP2 subclass
    assert blocker(OmegaConf.to_container(project_fsdp))
    assert blocker({"name": "auto"}) is None
    assert blocker({"name": "auto"}, devices=2)
    assert blocker("ddp") and blocker("ddp_spawn") is None


def test_a_job_in_another_process_finds_its_trial_through_the_storage(tmp_path, monkeypatch):
    from optsweep.sweeper import context

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()
    trial = study.ask()
    assert context.current() is None  # not in a sweep
    monkeypatch.setenv(context.SWEEP_ENV, context.sweep_environment(
        storage, "s", {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 3}, "parent-run"))
    monkeypatch.setenv(context.TRIAL_ENV, str(trial._trial_id))
    ctx = context.current()
    assert ctx.number == 1 and ctx.parent_run_id == "parent-run"
    assert ctx.mlflow_tags() == {"optuna.study": "s", "optuna.trial": "1", "mlflow.parentRunId": "parent-run"}
    assert isinstance(ctx.trial.study.pruner, optuna.pruners.MedianPruner)
    ctx.failure_reason = "non-finite loss at step 7"
    ctx.run_id = "child-run"
    stored = optuna.load_study(study_name="s", storage=storage).trials[1].user_attrs
    assert stored == {"failure_reason": "non-finite loss at step 7", "mlflow_run_id": "child-run"}


# ---------------------------------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """An empty MLflow sqlite store, created once: creating its tables costs several seconds per store."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    create = f"from mlflow import MlflowClient; MlflowClient('sqlite:///{path}').search_experiments()"
    subprocess.run([sys.executable, "-c", create], check=True, capture_output=True)
    return path


def with_mlflow_store(root: Path, store: Path) -> Path:
    (root / "outputs").mkdir(parents=True, exist_ok=True)
    shutil.copy(store, root / "outputs" / "mlflow.db")
    return root


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, mlflow_store):
    """One study run twice: 3 trials (trial 1 diverges), then the same command with n_trials=5 (trial 3
    raises). Returns (root, study after the first run, first run's output)."""
    root = with_mlflow_store(tmp_path_factory.mktemp("resume"), mlflow_store)
    command = ("diverge_on=[1]", "raise_on=[3]")
    first = toy_sweep(root, *command)
    ok(first)
    after_first = [(t.number, t.state, t.params) for t in the_study(root).trials]
    runs_after_first = parent_and_children(root)
    ok(toy_sweep(root, *command, "hydra.sweeper.n_trials=5"))
    return root, after_first, runs_after_first


def test_three_trial_sweep_with_a_diverging_trial(resumed):
    _, trials, (parent, children) = resumed
    assert [(n, s) for n, s, _ in trials] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL),
                                              (2, TrialState.COMPLETE)]
    # MLflow: one parent, one child per trial, each with the state Optuna recorded
    assert parent["status"] == "FINISHED"
    assert [c["tags"]["optuna.trial"] for c in children] == ["0", "1", "2"]
    assert [c["tags"]["optuna.state"] for c in children] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert [c["status"] for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert children[1]["tags"]["optuna.failure_reason"] == "non-finite loss at step 3"


def test_rerun_with_more_trials_adds_exactly_the_difference(resumed):
    root, first, _ = resumed
    study = the_study(root)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    # the first three are the same trials, untouched
    assert [(t.number, t.state, t.params) for t in trials[:3]] == first
    diverged, raised = trials[1], trials[3]
    assert diverged.user_attrs["failure_reason"] == "non-finite loss at step 3"
    assert raised.state == TrialState.FAIL
    assert raised.user_attrs["failure_reason"] == "RuntimeError: boom in trial 3"
    assert "Traceback" in raised.user_attrs["traceback"]
    # the sweep went on after each failure, and each value is the job's objective of the trial's params
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(toy_objective(t.params), rel=1e-12)
            assert f"x={t.params['x']}" in t.user_attrs["overrides"]
    assert trials[4].state == TrialState.COMPLETE
    parent, children = parent_and_children(root)
    assert [c["tags"]["optuna.trial"] for c in children] == ["0", "1", "2", "3", "4"]
    assert float(parent["tags"]["optuna.best_trial"]) == study.best_trial.number


def test_replicates_rerun_the_best_on_new_seeds_outside_the_search(tmp_path, mlflow_store):
    from omegaconf import OmegaConf

    root = with_mlflow_store(tmp_path, mlflow_store)
    command = ("hydra.sweeper.replicates.top_k=1", "hydra.sweeper.replicates.seeds=2")
    ok(toy_sweep(root, *command))
    storage = f"sqlite:///{root}/outputs/optuna.db"
    names = sorted(optuna.get_all_study_names(storage))
    assert len(names) == 2 and names[1] == f"{names[0]} [replicates]"
    search = optuna.load_study(study_name=names[0], storage=storage)
    replicas = optuna.load_study(study_name=names[1], storage=storage).trials
    assert len(search.trials) == 3  # the search's n_trials, untouched: the sampler never saw a replicate
    best = search.best_trial
    assert [(t.state, t.params, t.user_attrs["seed"], t.user_attrs["replicate_of"]) for t in replicas] == [
        (TrialState.COMPLETE, best.params, seed, best.number) for seed in (1, 2)]
    # the toy objective adds 0.01 x seed: the seed override reached each replicate's job
    assert [t.value for t in replicas] == pytest.approx([toy_objective(best.params) + 0.01 * s for s in (1, 2)])
    _, children = parent_and_children(root)
    marked = [c for c in children if c["tags"].get("optsweep.replicate") == "true"]
    assert len(children) == 5 and len(marked) == 2
    assert {c["tags"]["optsweep.replicate_of"] for c in marked} == {str(best.number)}
    assert {c["tags"]["optuna.state"] for c in marked} == {"COMPLETE"}
    (results,) = [OmegaConf.load(p) for p in (root / "multirun").glob("*/optimization_results.yaml")]
    assert results.replicates.study == names[1]
    assert [(t.replicate_of, t.seed, t.state) for t in results.replicates.trials] == [
        (best.number, 1, "COMPLETE"), (best.number, 2, "COMPLETE")]
    # the same command again runs nothing: the replicates are resumed, not repeated
    ok(toy_sweep(root, *command))
    assert len(optuna.load_study(study_name=names[1], storage=storage).trials) == 2
    assert len(parent_and_children(root)[1]) == 5


def test_a_replicate_trial_names_and_tags_its_run_from_the_start():
    """Tagged when training opens the run, not only when the sweeper finishes it: a replicate killed midway
    is still one in MLflow."""
    from optsweep.sweeper import context

    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={"replicate": True, "replicate_of": 4, "seed": 43})
    ctx = context.TrialContext(study.ask(), "s [replicates]", "parent")
    assert ctx.mlflow_tags() == {"optuna.study": "s [replicates]", "optuna.trial": "0", "mlflow.parentRunId": "parent",
                                 "optsweep.replicate": "true", "optsweep.replicate_of": "4"}
    assert ctx.run_name() == "replicate-0-of-trial-4"
    plain = context.TrialContext(optuna.create_study().ask(), "s", None)
    assert plain.mlflow_tags() == {"optuna.study": "s", "optuna.trial": "0"} and plain.run_name() == "trial-0"


def test_replicate_plan_takes_the_best_per_variant():
    from optuna.distributions import FloatDistribution as F
    from optuna.trial import create_trial

    from optsweep.sweeper.replicates import plan, seeds_for

    def trial(number, variant, value, state=TrialState.COMPLETE):
        t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                         params={"variant": variant, "lr": 0.1 * number},
                         distributions={"variant": CategoricalDistribution(["a", "b"]), "lr": F(0, 10)})
        t.number = number
        return t

    trials = [trial(0, "a", 3.0), trial(1, "a", 1.0), trial(2, "b", 2.0), trial(3, "a", 2.0),
              trial(4, "b", float("nan"), TrialState.FAIL), trial(5, "b", 5.0)]
    chosen = plan(trials, top_k=2, seeds=[7, 8])
    assert [(r.of, r.seed) for r in chosen] == [(1, 7), (1, 8), (3, 7), (3, 8), (2, 7), (2, 8), (5, 7), (5, 8)]
    assert seeds_for(3, 42) == [43, 44, 45] and seeds_for([5, 9], 42) == [5, 9]
    with pytest.raises(ValueError, match="other than the search's seed 42"):
        seeds_for([42, 1], 42)


def test_two_workers_share_one_study(tmp_path, mlflow_store):
    with_mlflow_store(tmp_path, mlflow_store)
    procs = [toy_popen(tmp_path, "hydra.sweeper.n_trials=6", "sleep=0.7", log=tmp_path / f"worker{i}.log")
             for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=150) == 0, (tmp_path / f"worker{i}.log").read_text()[-4000:]
    trials = the_study(tmp_path).trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["x"] for t in trials}) == 6, "workers must not draw the same points"
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {p.pid for p in procs}
    _, children = parent_and_children(tmp_path)
    assert [c["tags"]["optuna.trial"] for c in children] == [str(n) for n in range(6)]


def test_interrupted_trials_run_again_with_their_params(tmp_path):
    """Run 1: trial 1 stops as on SIGTERM (checkpoint saved): it is queued again and the sweep exits.
    Run 2: trial 1 runs again, then the worker is killed (-9) during trial 2. Run 3: trial 2 runs again."""
    storage = f"sqlite:///{tmp_path}/outputs/optuna.db"
    command = ("hydra.sweeper.n_trials=3", "logger.mlflow.tracking_uri=null")
    env = _env(tmp_path)

    first = subprocess.run([sys.executable, str(APP), "-m", "sweep=toy", *command], capture_output=True,
                           text=True, timeout=120, check=False, env=env | {"TOY_INTERRUPT_ON": "1"})
    assert first.returncode == 128 + signal.SIGTERM, first.stdout[-2000:] + first.stderr[-3000:]
    trials = the_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.WAITING)]
    assert trials[1].user_attrs["interruptions"] == ["interrupted: stopped by SIGTERM"]
    params_1 = trials[1].params

    log = tmp_path / "killed.log"
    proc = subprocess.Popen([sys.executable, str(APP), "-m", "sweep=toy", *command], env=env | {"TOY_SLEEP": "3"},
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline, running = time.time() + 120, None
    while running is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
        running = next((t for t in study.trials if t.number == 2 and t.state == TrialState.RUNNING
                        and t.params), None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert running is not None, log.read_text()[-3000:]

    ok(toy_sweep(tmp_path, *command))
    trials = the_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    assert trials[1].params == params_1 and trials[2].params == running.params
    assert trials[2].user_attrs["interruptions"] == [f"interrupted: its worker (pid {proc.pid}) is gone"]
    assert all(t.value == pytest.approx(toy_objective(t.params)) for t in trials)


@pytest.mark.parametrize("n_trials", ["10", "null"])
def test_grid_with_variants_runs_each_point_once(tmp_path, n_trials):
    """n_trials above the grid's size stops when the grid is done; unset (null), it is the grid's size."""
    proc = subprocess.run([sys.executable, str(APP), "-m", "sweep=toy_grid", "logger.mlflow.tracking_uri=null",
                           f"hydra.sweeper.n_trials={n_trials}"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=150, check=False)
    ok(proc)
    stopped = "the grid is exhausted (4 points)" if n_trials == "10" else "n_trials=4 reached"
    assert stopped in proc.stdout + proc.stderr
    trials = the_study(tmp_path).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    points = sorted((t.params["variant"], t.params["y"], t.value) for t in trials)
    assert [(v, y) for v, y, _ in points] == [("high", 0.0), ("high", 1.0), ("low", 0.0), ("low", 1.0)]
    # (x - 0.3)^2 + y with x = 0.9 (high) or 0.1 (low): the variant's override reached the job
    assert [value for *_, value in points] == pytest.approx([0.36, 1.36, 0.04, 1.04])


def test_pruning_callback_prunes_a_worse_trial(tmp_path):
    proc = toy_sweep(tmp_path, "hydra.sweeper.n_trials=2", "lightning=true", "logger.mlflow.tracking_uri=null",
                     "hydra.sweeper.pruner.n_startup_trials=1")
    ok(proc)
    first, second = the_study(tmp_path).trials
    # validation every 2 steps of 8: the complete trial reported 4 values, w moving from 0 towards 1
    assert first.state == TrialState.COMPLETE and sorted(first.intermediate_values) == [2, 4, 6, 8]
    assert all(0 <= v <= 1 for v in first.intermediate_values.values())
    # the second is 10 worse at every step (the toy adds 10 x trial number): stopped at its first report
    assert second.state == TrialState.PRUNED
    assert second.user_attrs["pruned_at_step"] == 2 and list(second.intermediate_values) == [2]
    assert 10 <= second.intermediate_values[2] <= 11


def test_multirun_with_ddp_fails_fast(tmp_path):
    proc = toy_sweep(tmp_path, "strategy=ddp", timeout=60)
    assert proc.returncode != 0
    assert "Hydra multirun cannot train with strategy=ddp" in proc.stdout + proc.stderr
    assert "use strategy=ddp_spawn" in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs" / "optuna.db").exists(), "refused before any study or trial"


# ---------------------------------------------------------------------------------------------- the project
SWEEPS = sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml") if p.stem != "base")


def _compose(sweep: str):
    return compose_config(f"sweep={sweep}", hydra_config=True, sweeps=True)


@pytest.mark.skipif(not (REPO / "conf" / "config.yaml").exists(), reason="needs the project's conf/")
@pytest.mark.parametrize("sweep", SWEEPS)
def test_project_sweeps_compose_and_parse(sweep):
    cfg = _compose(sweep)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.optsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    space, _ = SearchSpace.build(sweeper.params, sweeper.variants, [])
    assert space.params or space.variants
    optimizers = {p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml")}
    named = {p.fixed for bundle in space.variants.values() for p in bundle if p.key == "optimizer"}
    assert named <= optimizers and cfg.optimizer.name in optimizers
    from omegaconf import OmegaConf

    for bundle in space.variants.values():
        chosen = next((p.fixed for p in bundle if p.key == "optimizer"), cfg.optimizer.name)
        options = OmegaConf.load(REPO / "conf" / "optimizer" / f"{chosen}.yaml")  # the variant's optimizer
        for p in bundle:
            if p.key.startswith("optimizer."):
                assert p.key.removeprefix("optimizer.") in options, p.key
    for p in space.params:
        assert p.key.removeprefix("optimizer.") in cfg.optimizer, p.key
    if sweeper.sampler._target_.endswith("GridSampler"):
        # n_trials unset: the sweeper runs the whole grid
        assert sweeper.n_trials is None or math.prod(len(v) for v in space.grid().values()) == sweeper.n_trials
        # a grid is a table to fill: no point may be pruned by comparison with the others
        assert sweeper.pruner._target_ == "optuna.pruners.NopPruner"


@pytest.mark.skipif(not (REPO / "conf" / "config.yaml").exists(), reason="needs the project's conf/")
@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweeps_tune_or_tie_every_learning_rate(sweep):
    """Where a sweep tunes optimizer.lr, every other lr of that optimizer (Muon's adam_lr, SCALE's and
    SWAN's adam_lr) is tuned too or tied to it (null); and the file says which."""
    from omegaconf import OmegaConf

    assert "Learning rates" in (REPO / "sweeps" / "sweep" / f"{sweep}.yaml").read_text()
    cfg = _compose(sweep)
    space, _ = SearchSpace.build(cfg.hydra.sweeper.params, cfg.hydra.sweeper.variants, [])
    bundles = {name: {p.key: p for p in bundle} for name, bundle in space.variants.items()} or {None: {}}
    for name, bundle in bundles.items():
        entries = {p.key: p for p in space.params} | bundle
        optimizer = entries["optimizer"].fixed if "optimizer" in entries else cfg.optimizer.name
        defaults = OmegaConf.load(REPO / "conf" / "optimizer" / f"{optimizer}.yaml")
        lr = entries.get("optimizer.lr")
        if lr is None or lr.distribution is None:
            continue  # lr not tuned (a grid at given lrs): nothing to keep in step
        rates = [k for k in defaults if k.endswith("_lr") and not isinstance(defaults[k], str)]  # not adjust_lr
        for key in rates:
            entry = entries.get(f"optimizer.{key}")
            tied = entry is None and defaults[key] is None or entry is not None and entry.fixed == "null"
            assert tied or (entry is not None and entry.distribution is not None), (sweep, name, key)


def _learning_rates(optimizer: str) -> dict:
    """The yaml's learning-rate options other than lr (a text value such as adjust_lr: original is a mode)."""
    options = OmegaConf.load(REPO / "conf" / "optimizer" / f"{optimizer}.yaml")
    return {k: options[k] for k in options if k.endswith("_lr") and not isinstance(options[k], str)}


def test_every_optimizer_has_a_fair_ready_sweep():
    """Each optimizer config is swept with every learning rate tuned or tied: by its own lr_<name> (or
    SCALE's sweeps), or, when optimizer.lr is its only untied one, by the generic `sweep=lr optimizer=<name>`
    (so a new optimizer is swept with no other file). all_optimizers names only optimizers that exist."""
    optimizers = {path.stem for path in (REPO / "conf" / "optimizer").glob("*.yaml")}
    for name in sorted(optimizers):
        own = f"lr_{name}" in SWEEPS or name == "scale"
        untied = [k for k, v in _learning_rates(name).items() if v is not None]
        assert own or not untied, f"{name}: sweep=lr would leave {untied} fixed, and it has no lr_{name} sweep"
    assert {"lr", "scale_lr_momentum", "scale_normalization_ablation", "all_optimizers"} <= set(SWEEPS)
    variants = OmegaConf.load(REPO / "sweeps" / "sweep" / "all_optimizers.yaml").hydra.sweeper.variants
    assert {v.optimizer for v in variants.values()} <= optimizers


def test_the_space_names_each_learning_rate_a_sweep_leaves_fixed():
    """Hand-made spaces: Muon's adam_lr left fixed is named, tuned or tied (null) it is not; a grid at given
    lrs is not a tuned lr; a variant's optimizer is read from its bundle."""
    muon = {"name": "muon", "lr": 0.02, "adam_lr": 3e-4, "adjust_lr": "original"}
    swan = {"name": "swan", "lr": 1e-3, "adam_lr": None}
    options = {None: muon, "muon": muon, "swan": swan}.get

    def left(params, variants=None):
        return SearchSpace.build(params, variants, [])[0].left_fixed_rates(options)

    tuned = "tag(log, interval(1e-4, 1e-2))"
    assert left({"optimizer.lr": tuned}) == [("adam_lr", "muon")]
    assert left({"optimizer.lr": tuned, "optimizer.adam_lr": tuned}) == []
    assert left({"optimizer.lr": tuned, "optimizer.adam_lr": "null"}) == []
    assert left({"optimizer.lr": tuned, "optimizer.adam_lr": 1e-3}) == [("adam_lr", "muon")]
    assert left({"optimizer.lr": "choice(0.01, 0.02)"}) == [("adam_lr", "muon")]  # a categorical lr is tuned
    assert left({"optimizer.lr": 0.02}) == []
    assert left(None, {"a": {"optimizer": "swan", "optimizer.lr": tuned},
                       "b": {"optimizer": "muon", "optimizer.lr": tuned}}) == [("adam_lr", "muon")]


@pytest.mark.skipif(not (REPO / "run.py").exists(), reason="needs run.py")
def test_run_py_refuses_a_sweep_that_leaves_a_learning_rate_fixed(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPTSWEEP_")}, "PROJECT_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "sweep=lr", "optimizer=muon",
                           "experiment=quickstart"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [("error: the sweep tunes optimizer.lr but leaves optimizer.adam_lr of muon fixed, a learning "
                     "rate that moves weights too: tune it as well ('optimizer.adam_lr=tag(log, interval(<low>, "
                     "<high>))'), tie it to lr (optimizer.adam_lr=null) or use muon's own sweep in sweeps/sweep/")], \
        done.stderr[-2000:]
    assert not (tmp_path / "outputs" / "optuna.db").exists(), "refused before any study"


def metric_history(root: Path, run_id: str, metric: str) -> dict[int, list[float]]:
    """step -> every value a run logged (a resumed trial logs the steps after its checkpoint twice)."""
    with sqlite3.connect(root / "outputs" / "mlflow.db") as db:
        rows = db.execute("select step, value from metrics where run_uuid = ? and key = ? order by timestamp",
                          (run_id, metric)).fetchall()
    out: dict[int, list[float]] = {}
    for step, value in rows:
        out.setdefault(step, []).append(value)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "run.py").exists(), reason="needs run.py")
def test_run_py_sweep_failure_paths_end_to_end(tmp_path):
    """run.py under the sweeper as a user starts it (PROJECT_ROOT only moves outputs/ to tmp_path; the sweeps
    and the storage default stay the platform's): scale_lr_momentum at one fixed point, three quickstart
    trials of 8 steps that train alike but for tests/_inject.SweepFaults: trial 0 runs through; trial 1's
    weights turn NaN after step 6; trial 2 is SIGKILLed after step 6 (the whole sweep with it: Hydra's basic
    launcher runs trials in its process), past its step-4 checkpoint. The same command again resumes trial 2
    from that checkpoint, and it ends with trial 0's losses, bit for bit (CPU fp32)."""
    from _inject import run_py

    command = ["sweep=scale_lr_momentum", "experiment=quickstart", "hydra.sweeper.n_trials=3",
               "optimizer.lr=choice(0.003)", "optimizer.adam_lr=choice(0.01)", "optimizer.momentum=choice(0.9)",
               "train.max_steps=8", "train.warmup_steps=1", "train.eval_every_n_steps=4", "train.eval_at_start=false",
               "train.total_batch_size=8", "train.micro_batch_size=8", "data.seq_len=32", "data.val_tokens=600",
               "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=4",
               "+callbacks.faults._target_=_inject.SweepFaults", "+callbacks.faults.step=6",
               "+callbacks.faults.nan_trial=1", "+callbacks.faults.kill_trial=2",
               f"+callbacks.faults.marker={tmp_path / 'killed-once'}"]
    killed = run_py(tmp_path, *command, timeout=400, multirun=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    trials = the_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert trials[1].user_attrs["failure_reason"].startswith("training diverged: non-finite loss at step 7")
    _, children = parent_and_children(tmp_path)
    assert [c["status"] for c in children] == ["FINISHED", "FAILED", "RUNNING"]
    assert children[1]["tags"]["optuna.state"] == "FAIL"
    assert children[1]["tags"]["optuna.failure_reason"] == trials[1].user_attrs["failure_reason"]

    resumed = run_py(tmp_path, *command, timeout=400, multirun=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    trials = the_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    (why,) = trials[2].user_attrs["interruptions"]
    assert re.fullmatch(r"interrupted: its worker \(pid \d+\) is gone", why), why
    assert set(trials[0].params) == {"optimizer.lr", "optimizer.adam_lr", "optimizer.momentum"}
    assert trials[2].params == trials[0].params and math.isfinite(trials[0].value)
    assert trials[2].value == trials[0].value
    ckpts = tmp_path / "outputs" / "checkpoints" / "sweeps" / f"optuna-trial-{trials[2]._trial_id}"
    assert f"resuming from {ckpts}" in resumed.stderr + "".join(
        p.read_text() for p in (tmp_path / "outputs").rglob("*.log"))
    _, children = parent_and_children(tmp_path)  # still one child per trial: trial 2 continued its run
    assert [c["status"] for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert [c["tags"]["optuna.state"] for c in children] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert all(c["tags"].get("optimizer") == "scale" for c in children)
    for metric, steps in (("train/loss", list(range(1, 9))), ("val/loss", [4, 8])):
        whole = metric_history(tmp_path, children[0]["id"], metric)
        again = metric_history(tmp_path, children[2]["id"], metric)
        assert sorted(whole) == sorted(again) == steps, (metric, whole, again)
        assert all(v == whole[s][0] for s, values in again.items() for v in values), (metric, whole, again)
