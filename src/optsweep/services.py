"""Is the MLflow tracking server there, and the Optuna storage? Asked before any training, in seconds.

Left to themselves, MLflow's HTTP client retries an unreachable server for about 261 s (7 retries, backoff
factor 2, 120 s timeouts) and SQLAlchemy ends in a raw ``OperationalError``; a sweep would then fail every
trial in turn. Here each service gets one short probe with a timeout, and a failure is one sentence naming
the address and the fix (exit status 2). MLflow's own retries are shortened too (unless the user set them),
so that a server that goes away during a run costs seconds per call, not minutes.

Only the standard library is imported at module level: the probes run before torch and Lightning load.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request

from optsweep.errors import ServiceUnreachableError

PROBE_TIMEOUT_S = 5.0
# MLflow's HTTP settings while a run logs (environment variables it reads at each call)
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
POSTGRES_EXTRA = 'pip install -e ".[postgres]"'
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


def shorten_mlflow_retries() -> None:
    """A few seconds per failed MLflow call instead of minutes; a value the user exported wins."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def check_tracking_uri(uri: str | None, setting: str = "logger.mlflow.tracking_uri",
                       timeout: float = PROBE_TIMEOUT_S) -> None:
    """An http(s) tracking URI must answer its /health endpoint (any HTTP answer proves a server is there)."""
    if not uri or urllib.parse.urlsplit(str(uri)).scheme not in ("http", "https"):
        return  # a local store (sqlite, a folder) or a scheme MLflow resolves itself (databricks, ...)
    uri = str(uri).rstrip("/")
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as error:
        reason = _reason(error, timeout)
    raise ServiceUnreachableError(
        f"the MLflow tracking server {uri} cannot be reached ({reason}): start it (mlflow server --host "
        f"0.0.0.0 --port {urllib.parse.urlsplit(uri).port or 5000} ...), fix {setting}, or train without it "
        "with logger=csv or logger=none"
    )


def check_storage_url(url: str | None, setting: str = "hydra.sweeper.storage",
                      timeout: float = PROBE_TIMEOUT_S) -> None:
    """A database URL for Optuna: its driver must be installed and its server must accept a connection."""
    if not url or str(url).startswith("sqlite"):
        return  # in memory, or a local file
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(str(url))
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise ServiceUnreachableError(
            f"{setting}={_hide_password(url)} is not a database URL SQLAlchemy knows ({error}): write it as "
            "postgresql+psycopg://user:password@host:5432/database or sqlite:///path/optuna.db"
        ) from None
    shown = _hide_password(url)
    try:
        dialect.import_dbapi()
    except ImportError as error:
        module = getattr(error, "name", None) or str(error)
        if parsed.get_backend_name() != "postgresql":
            fix = f"pip install {module}"
        elif parsed.get_driver_name() == "psycopg":
            fix = f"{POSTGRES_EXTRA} (psycopg 3, the driver of postgresql:// and postgresql+psycopg://)"
        else:
            fix = f"pip install {module}, or use the project's driver: postgresql+psycopg://... and {POSTGRES_EXTRA}"
        raise ServiceUnreachableError(
            f"{setting}={shown} needs the database driver module '{module}' ({parsed.drivername}), which is not "
            f"installed: {fix}"
        ) from None
    if parsed.host is None or parsed.host.startswith("/"):
        return  # a Unix socket: the driver reports it
    port = parsed.port or _DEFAULT_PORTS.get(parsed.get_backend_name())
    if port is None:
        return
    try:
        with socket.create_connection((parsed.host, port), timeout=timeout):
            return
    except OSError as error:
        reason = _reason(error, timeout)
    raise ServiceUnreachableError(
        f"the Optuna storage {shown} cannot be reached ({parsed.host}:{port}: {reason}): start the database "
        f"server, or fix {setting} (the default, sqlite:///outputs/optuna.db, needs no server)"
    )


def check_run_services(cfg) -> None:
    """Every tracking server a run's loggers name (``logger.<name>.tracking_uri``)."""
    for name, logger in (cfg.get("logger") or {}).items():
        if logger is not None and "tracking_uri" in logger:
            check_tracking_uri(logger.tracking_uri, f"logger.{name}.tracking_uri")


def _reason(error: BaseException, timeout: float) -> str:
    inner = getattr(error, "reason", error)
    if isinstance(inner, (TimeoutError, socket.timeout)) or "timed out" in str(inner):
        return f"no answer within {timeout:g} s"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, socket.gaierror):
        return "unknown host"
    return " ".join(str(getattr(inner, "strerror", None) or inner).split())


def _hide_password(url: str) -> str:
    parts = urllib.parse.urlsplit(str(url))
    if parts.password is None:
        return str(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
