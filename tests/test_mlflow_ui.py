"""The MLflow UI in a real browser: headless Chromium renders the links a run prints, served by `mlflow ui`
on a store holding a run logged the way training logs it (experiment tag, params, datasets, a metric). The
pages must be the model-training views (runs table with the Dataset column, run page with its metrics), not
MLflow 3's GenAI overview (traces, token usage) that a bare experiment URL opens.

Needs Chromium (`apt install chromium` on Debian); skipped without it. With OPTSWEEP_UI_SCREENSHOTS=DIR set,
the two pages are also saved there as PNG (how docs/img/mlflow_ui_runs.png is made).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from optsweep import tracking

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt install chromium` to check the UI")
GENAI_OVERVIEW = ("Token Usage", "Observability")  # on the GenAI pages, in no model-training page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`mlflow ui` on a fresh store with one run logged through our tracking code."""
    from lightning.pytorch.loggers import MLFlowLogger

    root = tmp_path_factory.mktemp("mlflow-ui")
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    # artifacts under tmp too: by default the server puts them in ./mlartifacts of its working directory
    proc = subprocess.Popen([mlflow, "ui", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=(root / "ui.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "ui.log").read_text()[-2000:]
                time.sleep(0.5)
        logger = MLFlowLogger(experiment_name="ui-check", run_name="scale-llama_tiny", tracking_uri=uri)
        cfg = OmegaConf.create({"optimizer": {"name": "scale", "lr": 1e-3}, "seed": 0})
        data = root / "shards"
        data.mkdir()
        tracking.log_run_context(logger, cfg, [
            {"name": "sample-train", "kind": "local", "source": str(data), "split": "train",
             "digest": "0123456789abcdef"}])
        logger.log_metrics({"val/loss": 4.25}, step=10)
        logger.finalize("success")
        yield uri, logger.experiment_id, logger.run_id
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def rendered_text(url: str, screenshot: Path | None = None) -> str:
    """The page's visible text after its scripts ran (Chromium's --dump-dom)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
            "--virtual-time-budget=20000"]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    html = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True).stdout
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.DOTALL)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def screenshot_path(name: str) -> Path | None:
    folder = os.environ.get("OPTSWEEP_UI_SCREENSHOTS")
    return Path(folder) / name if folder else None


def test_the_printed_run_link_opens_the_run_page(ui):
    uri, experiment_id, run_id = ui
    line = tracking.run_link(uri, experiment_id, run_id)
    url = line.removeprefix("MLflow run: ")
    text = rendered_text(url, screenshot_path("mlflow_ui_run.png"))
    assert "scale-llama_tiny" in text and "Model metrics" in text and "val/loss 4.25" in text, text[:1500]
    assert not any(marker in text for marker in GENAI_OVERVIEW), text[:1500]


def test_the_experiment_link_opens_the_runs_table_with_the_dataset(ui):
    uri, experiment_id, _ = ui
    text = rendered_text(tracking.experiment_link(uri, experiment_id), screenshot_path("mlflow_ui_runs.png"))
    assert "Run Name" in text and "Dataset" in text, text[:1500]
    assert "scale-llama_tiny" in text and "sample-train (0123456789abcdef) training" in text, text[:1500]
    assert not any(marker in text for marker in GENAI_OVERVIEW), text[:1500]
