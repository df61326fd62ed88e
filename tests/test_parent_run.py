"""The sweep's MLflow parent run and the trials' records when several processes share a study (issue 16,
item 3): one parent per study however many workers start together, the parent's counts are the study's as
of the worker that finished last, `worker` names the process that trained, and a trial that ran its whole
budget is COMPLETE even when the pruner would have stopped it at its last report.

Sweeps are the toy app of tests/_sweep_app (see tests/test_sweeper.py) on an SQLite Optuna storage. The
MLflow store is a plain folder, which, like a tracking server, has no lock to serialise workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from optsweep.sweeper import context

APP = Path(__file__).resolve().parent / "_sweep_app" / "app.py"


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTSWEEP_")}
    env.update(TOY_ROOT=str(root), TOY_SWEEPS=str(APP.parent / "sweeps"), HYDRA_FULL_ERROR="1",
               PYTHONUNBUFFERED="1", MLFLOW_ALLOW_FILE_STORE="true", **extra)
    return env


def test_two_workers_share_one_parent_whose_counts_are_the_study_s(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    store = f"file://{tmp_path}/mlruns"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(store)
    # created beforehand: a folder store, unlike a server's database, could create two experiments named toy
    experiment = client.create_experiment("toy")
    command = [sys.executable, str(APP), "-m", "sweep=toy", "hydra.sweeper.n_trials=2",
               f"logger.mlflow.tracking_uri={store}"]
    # Each worker takes one trial; the faster one finishes (and summarizes) while the other still trains.
    # Creating a parent takes 2 s: workers that each look for one and create it would both do so.
    procs = [subprocess.Popen(command, env=_env(tmp_path, TOY_SLEEP=sleep, TOY_SLOW_PARENT="2"),
                              stdout=(tmp_path / f"w{sleep}.log").open("w"), stderr=subprocess.STDOUT)
             for sleep in ("1", "3")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, [p.read_text()[-3000:] for p in tmp_path.glob("w*.log")]
    (name,) = optuna.get_all_study_names(f"sqlite:///{tmp_path}/outputs/optuna.db")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert {t.user_attrs["sweeper"]["pid"] for t in study.trials} == {p.pid for p in procs}, "one trial each"

    parents = client.search_runs([experiment], "tags.`optuna.role` = 'sweep'", run_view_type=ViewType.ALL)
    assert [p.info.lifecycle_stage for p in parents] == ["active"], "one parent, none created and trashed"
    parent = parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    counts = [metrics.get(f"trials_{state}") for state in ("complete", "running", "waiting", "pruned", "fail")]
    assert counts == [2, 0, 0, 0, 0], "the counts of the last summary: the whole study, every state"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1"]


def test_a_count_taken_earlier_but_logged_later_does_not_win(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from optsweep.sweeper.mlflow_parent import SweepRun

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file://{tmp_path}/mlruns")
    experiment = client.create_experiment("e")
    parent = SweepRun(client, experiment, client.create_run(experiment).info.run_id)
    now, best = time.time(), [SimpleNamespace(number=n, value=v, params={}) for n, v in ((0, 0.5), (1, 0.25))]
    parent.summarize({"COMPLETE": 2, "RUNNING": 0}, best[1], 0, counted_at=now)  # the worker that finished last
    parent.summarize({"COMPLETE": 1, "RUNNING": 1}, best[0], 1, counted_at=now - 1)  # slower to log its count
    run = client.get_run(parent.run_id)
    metrics = run.data.metrics
    assert (metrics["trials_complete"], metrics["trials_running"], metrics["best_value"]) == (2, 0, 0.25)
    assert run.data.tags["optuna.best_trial"] == "1"


def test_worker_names_the_job_process_not_the_sweeper(tmp_path):
    """A job in another process than its sweeper (submitit, joblib): it finds its trial through the
    storage, and its own process is the trial's `worker`."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("sweeper", {"machine": context.machine(), "pid": os.getpid()})  # as the sweeper does
    env = _env(tmp_path, OPTSWEEP_TRIAL_ID=str(trial._trial_id),
               OPTSWEEP_SWEEP=context.sweep_environment(storage, "s", None, None))
    job = subprocess.Popen([sys.executable, str(APP), "logger.mlflow.tracking_uri=null"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out[-3000:]
    attrs = optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs
    assert attrs["worker"] == {"machine": context.machine(), "pid": job.pid}
    assert attrs["sweeper"]["pid"] == os.getpid()


def _fit(trial: optuna.Trial, val_every: int, steps: int = 4) -> float:
    """A one-parameter model trained `steps` steps under the pruning callback; its loss is 10 x the trial number."""
    import lightning.pytorch as pl
    import torch

    from optsweep.sweeper.pruning import OptunaPruning

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return self.w ** 2

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.w ** 2 + 10.0 * trial.number)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.zeros(16, 1), batch_size=1)
    trainer = pl.Trainer(max_steps=steps, val_check_interval=val_every, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[OptunaPruning(trial, "val/loss")])
    trainer.fit(Model(), data, data)
    return float(trainer.callback_metrics["val/loss"])


def test_a_trial_that_ran_its_whole_budget_is_not_pruned():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.tell(first := study.ask(), _fit(first, val_every=2))
    last_report_at_the_end = study.ask()  # 10 worse than the first at step 4, its last step
    value = _fit(last_report_at_the_end, val_every=4)
    assert "pruned_at_step" not in last_report_at_the_end.user_attrs
    assert study.tell(last_report_at_the_end, value).state == optuna.trial.TrialState.COMPLETE
    assert value == 10.0  # its final loss is its value
    with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):  # before its last step it is pruned
        _fit(study.ask(), val_every=2)
