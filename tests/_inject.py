"""Test-only callbacks, loaded into a run.py subprocess with PYTHONPATH=tests and
``+callbacks.<key>._target_=_inject.<Class>``: they make things go wrong at a chosen optimizer step."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class SignalAt(L.Callback):
    """Sends ``signum`` (a name like SIGTERM or SIGKILL) to its own process right after optimizer step ``step``."""

    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step = step
        self.signum = getattr(signal, signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not trainer.fit_loop._should_accumulate():
            os.kill(os.getpid(), self.signum)


class NanAt(L.Callback):
    """Sets the first entry of every weight to NaN after optimizer step ``step``: step ``step + 1``'s loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not trainer.fit_loop._should_accumulate():
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.view(-1)[0] = float("nan")


# --- driving run.py in a subprocess (as tests/test_run_e2e.py does) ---------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_py(tmp, *overrides: str, timeout: int = 300):
    """run.py with outputs under ``tmp/outputs``, the sample corpus shared beside ``tmp``, this module importable."""
    import subprocess
    import sys

    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PROJECT_ROOT": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "run.py"), f"paths.data_dir={tmp.parent / 'shared-data'}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def mlflow_run(tmp, experiment: str = "quickstart"):
    """(client, the only run) of an experiment in ``tmp``'s MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def history(tmp, metric: str, experiment: str = "quickstart") -> dict[int, list[float]]:
    """step -> every value logged at that step (a resumed run may log a step twice: both must agree)."""
    client, r = mlflow_run(tmp, experiment)
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(r.info.run_id, metric):
        out.setdefault(m.step, []).append(m.value)
    return out
