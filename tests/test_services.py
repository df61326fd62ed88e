"""Services that are not there fail in seconds with one sentence: the MLflow tracking server (a closed port,
a server that never answers, a real `mlflow server` that was stopped), the Optuna storage (a closed port, a
missing driver), and a sweep whose tracking server goes away between trials. With a real `mlflow server` on
127.0.0.1, a run stores its artifacts on the server, tags its experiment, records its datasets, prints its
link and logs one line per event.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from optsweep import errors, services
from optsweep.services import ServiceUnreachableError, check_storage_url, check_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
TOY_APP = ROOT / "tests" / "_sweep_app"
TINY = ["experiment=quickstart", "train.total_batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=2",
        "data.val_tokens=2000", "train.max_steps=2"]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the probes ---------------------------------------------------------------------------------------------

def test_closed_tracking_port_fails_at_once():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ServiceUnreachableError) as caught:
        check_tracking_uri(f"http://127.0.0.1:{port}/")
    assert time.monotonic() - started < 2
    assert str(caught.value) == (
        f"the MLflow tracking server http://127.0.0.1:{port} cannot be reached (connection refused): start it "
        f"(mlflow server --host 0.0.0.0 --port {port} ...), fix logger.mlflow.tracking_uri, or train without it "
        "with logger=csv or logger=none")


def test_silent_tracking_server_times_out():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServiceUnreachableError, match=r"\(no answer within 0.5 s\)"):
            check_tracking_uri(f"http://127.0.0.1:{port}", timeout=0.5)
        assert time.monotonic() - started < 3


def test_local_stores_are_not_probed():
    for uri in (None, "", "sqlite:///outputs/mlflow.db", "file:///tmp/mlruns", "databricks"):
        check_tracking_uri(uri)
    for url in (None, "sqlite:///outputs/optuna.db"):
        check_storage_url(url)


def test_any_http_answer_means_a_server_is_there():
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Forbidden(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def test_closed_storage_port_names_the_url_without_its_password():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ServiceUnreachableError) as caught:
        check_storage_url(f"postgresql+psycopg://optuna:s3cret@127.0.0.1:{port}/optuna")
    assert time.monotonic() - started < 10  # importing SQLAlchemy and the driver, then one refused connect
    message = str(caught.value)
    assert message.startswith(f"the Optuna storage postgresql+psycopg://optuna:***@127.0.0.1:{port}/optuna cannot be "
                              f"reached (127.0.0.1:{port}: connection refused): start the database server")
    assert "s3cret" not in message


def test_missing_driver_names_the_module_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(ServiceUnreachableError) as caught:
        check_storage_url("postgresql://optuna:pw@db-host:5432/optuna")
    assert "needs the database driver module 'psycopg' (postgresql), which is not installed: " \
           'pip install -e ".[postgres]"' in str(caught.value)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(ServiceUnreachableError) as caught:
        check_storage_url("postgresql+psycopg2://optuna:pw@db-host:5432/optuna")
    assert "'psycopg2' (postgresql+psycopg2), which is not installed: pip install psycopg2, or use the project's " \
           "driver: postgresql+psycopg://" in str(caught.value)


def test_not_a_database_url():
    with pytest.raises(ServiceUnreachableError, match="is not a database URL SQLAlchemy knows"):
        check_storage_url("postgres-ish://nowhere")


def test_mlflow_retries_are_shortened_unless_set(monkeypatch):
    for key in services.MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    services.shorten_mlflow_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"  # the user's value wins


# --- a sweep ------------------------------------------------------------------------------------------------

GONE_APP = textwrap.dedent('''
    """The toy sweep app, whose tracking server is gone from trial TOY_GONE_FROM on."""
    import os
    import hydra
    from optsweep.services import ServiceUnreachableError
    from optsweep.sweeper import context

    @hydra.main(version_base="1.3", config_path=os.environ["TOY_CONF"], config_name="config")
    def main(cfg):
        if context.current().number >= int(os.environ["TOY_GONE_FROM"]):
            if os.environ["TOY_GONE_WHEN"] == "before":  # run.py's probe before training
                raise ServiceUnreachableError("the MLflow tracking server http://127.0.0.1:9 cannot be reached "
                                              "(connection refused): start it")
            from mlflow.exceptions import MlflowException  # an MLflow call while training

            raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/get failed with "
                                  "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded "
                                  "(Caused by NewConnectionError(Connection refused))")
        return (cfg.x - 0.3) ** 2 + cfg.y

    if __name__ == "__main__":
        main()
''')


def toy_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTSWEEP_")}
    env.update(TOY_ROOT=str(root), TOY_SWEEPS=str(TOY_APP / "sweeps"), TOY_CONF=str(TOY_APP / "conf"),
               HYDRA_FULL_ERROR="1", **extra)
    return env


@pytest.mark.parametrize("when", ["before", "during"])
def test_sweep_stops_when_its_tracking_server_goes_away(tmp_path, when):
    app = tmp_path / "gone_app.py"
    app.write_text(GONE_APP)
    result = subprocess.run([sys.executable, str(app), "-m", "sweep=toy", "hydra.sweeper.n_trials=3",
                             "logger.mlflow.tracking_uri=null"],
                            env=toy_env(tmp_path, TOY_GONE_FROM="1", TOY_GONE_WHEN=when), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0
    sentence = {"before": "cannot be reached (connection refused): start it",
                "during": "stopped answering during the run (connection refused, after MLflow's retries)"}[when]
    assert f"ServiceUnreachableError: the MLflow tracking server http://127.0.0.1:9 {sentence}" in result.stderr
    assert ("; the sweep stopped (its unstarted trials wait): run the same command again to continue it"
            in result.stderr)
    storage = f"sqlite:///{tmp_path}/outputs/optuna.db"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "WAITING"], states  # not FAILed, not counted: the next run repeats it


def test_sweep_with_unreachable_storage_stops_before_any_trial(tmp_path):
    port = closed_port()
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(TOY_APP / "app.py"), "-m", "sweep=toy",
                             f"hydra.sweeper.storage=postgresql+psycopg://optuna:pw@127.0.0.1:{port}/optuna"],
                            env=toy_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode != 0 and elapsed < 30, elapsed
    assert (f"the Optuna storage postgresql+psycopg://optuna:***@127.0.0.1:{port}/optuna cannot be reached "
            f"(127.0.0.1:{port}: connection refused)") in result.stderr
    assert not (tmp_path / "multirun").exists()  # no trial started


# --- a real `mlflow server` ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.skip("the mlflow command is not installed")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = closed_port()
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail((root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start within 150 s")
    yield uri, root, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # uvicorn and its job runner take long to stop on SIGTERM
        proc.wait(30)


def run_py(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "run.py"), f"paths.data_dir={tmp.parent / 'shared-data'}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)


@pytest.mark.slow
def test_run_on_a_real_tracking_server_then_without_it(mlflow_server, tmp_path):
    uri, server_root, proc = mlflow_server
    result = run_py(tmp_path, *TINY, f"logger.mlflow.tracking_uri={uri}", "task_name=served")
    assert result.returncode == 0, result.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("served")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    # artifacts live on the server (proxied), not in a client-side folder another machine cannot read
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config", "environment"}
    assert list((server_root / "artifacts").rglob("resolved.yaml"))
    assert not (tmp_path / "outputs" / "mlartifacts").exists()
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"sample-train", "sample-validation"}
    assert [t.value for t in inputs["sample-train"].tags] == ["training"]
    assert str(tmp_path.parent / "shared-data" / "sample") in inputs["sample-train"].dataset.source

    link = (f"MLflow run: {uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
            "?workflowType=machine_learning")
    assert link in result.stdout.splitlines()
    output = result.stdout + result.stderr
    assert "View run" not in output  # MLflow's own links (two per run) give way to ours
    assert "INFO: " not in output and "Tip:" not in output  # Lightning's second console handler, its advert
    assert output.count("Seed set to 42") == 1
    assert "LeafSpec" not in output and "has `__len__` defined" not in output

    os.killpg(proc.pid, signal.SIGKILL)  # the server dies; its port is closed now
    proc.wait(30)
    started = time.monotonic()
    result = run_py(tmp_path, *TINY, f"logger.mlflow.tracking_uri={uri}", "task_name=served")
    elapsed = time.monotonic() - started
    assert result.returncode == 2 and elapsed < 15, (elapsed, result.stderr[-2000:])
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the MLflow tracking server {uri} cannot be reached (connection refused): start it (mlflow server "
        f"--host 0.0.0.0 --port {uri.rsplit(':', 1)[1]} ...), fix logger.mlflow.tracking_uri, or train without it "
        "with logger=csv or logger=none")


def test_a_server_lost_during_the_run_is_one_sentence():
    from mlflow.exceptions import MlflowException

    from optsweep.errors import explain

    # the message MLflow 3.17 raised when its server was killed mid-run (measured with a real server)
    lost = MlflowException(
        "API request to http://127.0.0.1:5932/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool("
        "host='127.0.0.1', port=5932): Max retries exceeded with url: /api/2.0/mlflow/runs/get?run_uuid=58d6 "
        "(Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=5932): Failed to establish a new "
        "connection: [Errno 111] Connection refused\"))")
    sentence, status = explain(lost)
    assert status == 2 and sentence.startswith(
        "the MLflow tracking server http://127.0.0.1:5932 stopped answering during the run (connection refused, "
        "after MLflow's retries): the checkpoints written so far are kept")
    assert errors.tracking_server_lost(MlflowException("RESOURCE_DOES_NOT_EXIST: run 1 not found")) is None
    assert errors.tracking_server_lost(ValueError(str(lost))) is None
