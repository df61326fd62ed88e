"""The multi-machine recipe's study storage on a real PostgreSQL server: a throw-away cluster in a temporary
folder (initdb + pg_ctl on a free port), the URL written as sweeps/README.md writes it
(``postgresql+psycopg://optuna:PASSWORD@host:port/optuna``), the probe passing, a toy sweep finishing its
trials there, and the same URL with the server stopped refused in one sentence. Skipped when PostgreSQL's
server programs or the psycopg driver (``pip install -e ".[postgres]"``) are not installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from optsweep.services import ServiceUnreachableError, check_storage_url

ROOT = Path(__file__).resolve().parents[1]
TOY_APP = ROOT / "tests" / "_sweep_app"


def _pg_bin() -> Path | None:
    for candidate in (shutil.which("initdb"), *sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))):
        if candidate and Path(candidate).exists():
            return Path(candidate).resolve().parent
    return None


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason='the PostgreSQL driver is not installed: pip install -e ".[postgres]"')
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres account
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres account to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    # under /tmp itself: pytest's own temporary folders are private to this user
    root = Path(tempfile.mkdtemp(prefix="optsweep-pg-"))
    os.chmod(root, 0o777)
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "pw").write_text("s3cret\n")
    os.chmod(root / "pw", 0o644)

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "optuna", "--pwfile", str(root / "pw"), "-A", "md5")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    env = {**os.environ, "PGPASSWORD": "s3cret"}
    subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "optuna", "optuna"],
                   check=True, env=env, capture_output=True, timeout=60)
    stop = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
    yield f"postgresql+psycopg://optuna:s3cret@127.0.0.1:{port}/optuna", stop
    subprocess.run(stop, capture_output=True, timeout=60, check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_sweep_on_a_real_postgres_then_without_it(postgres, tmp_path):
    url, stop = postgres
    check_storage_url(url)  # the driver imports and the server accepts a connection
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTSWEEP_")}
    env.update(TOY_ROOT=str(tmp_path), TOY_SWEEPS=str(TOY_APP / "sweeps"), HYDRA_FULL_ERROR="1")
    result = subprocess.run([sys.executable, str(TOY_APP / "app.py"), "-m", "sweep=toy", "hydra.sweeper.n_trials=3",
                             f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=pg_recipe"],
                            env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="pg_recipe", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3

    subprocess.run(stop, check=True, capture_output=True, timeout=60)
    started = time.monotonic()
    with pytest.raises(ServiceUnreachableError, match=r"optuna:\*\*\*@127\.0\.0\.1:\d+/optuna cannot be reached "
                                                      r"\(127\.0\.0\.1:\d+: connection refused\)"):
        check_storage_url(url)
    assert time.monotonic() - started < 5
