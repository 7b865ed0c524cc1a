"""Fixtures of the storage tests: a SQLite file database, a real PostgreSQL server (marker `postgres`),
and a real `mlflow server` (session-scoped; started right after collection so that it boots while
the other tests run)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _storage_testlib import make_config  # noqa: E402
from system_services import drop_pg_database, new_pg_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- PostgreSQL
# The server itself is the session fixture `pg_server` of tests/conftest.py (one per test run).
_new_pg_database = new_pg_database
_drop_pg_database = drop_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database: a SQLite file in tmp_path, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db/audit.db"
        return
    base = request.getfixturevalue("pg_server")
    url, name = _new_pg_database(base)
    yield url
    _drop_pg_database(base, name)


@pytest.fixture
def cfg():
    return make_config()


@pytest.fixture
def store(db_url, tmp_path, cfg):
    """An AuditStore on an upgraded database with the registry of `cfg` and versions 1 and 2 of model `m`."""
    from storage.repository import AuditStore

    st = AuditStore(db_url, tmp_path / "artifacts")
    st.upgrade()
    st.sync_registry(cfg)
    st.upsert_model_version("m", "1", "builtin:efficientnet_lite0", "a" * 64)
    st.upsert_model_version("m", "2", "file:v2.safetensors", "b" * 64)
    yield st
    st.close()


# ---------------------------------------------------------------- MLflow server
_MLFLOW: dict = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    if any("mlflow_server" in getattr(it, "fixturenames", ()) for it in items):
        _start_mlflow_server()


def _start_mlflow_server() -> None:
    if _MLFLOW:
        return
    d = Path(tempfile.mkdtemp(prefix="neuron-audit-mlflow-server-"))
    port = free_port()
    log = open(d / "server.log", "wb")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--default-artifact-root", (d / "artifacts").as_uri()]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d, start_new_session=True)
    _MLFLOW.update(proc=proc, dir=d, port=port, log=log, url=f"http://127.0.0.1:{port}", started=time.monotonic())


def _stop_mlflow_server() -> None:
    proc = _MLFLOW.get("proc")
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()                      # kill -TERM on the main PID stops its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)
    _MLFLOW["log"].close()
    shutil.rmtree(_MLFLOW["dir"], ignore_errors=True)
    _MLFLOW.clear()


def pytest_sessionfinish(session, exitstatus):
    _stop_mlflow_server()


# The server is up when /health answers; while its process is alive it is still booting (gunicorn and
# mlflow's imports take a minute on a loaded 2-core machine), so the wait is bounded by the process, not
# by a clock. The cap only catches a server that hangs forever without exiting.
MLFLOW_BOOT_CAP_S = 1200


@pytest.fixture(scope="session")
def mlflow_server():
    """URL of a real `mlflow server --workers 1` (sqlite backend, file artifact root), healthy."""
    _start_mlflow_server()
    url = _MLFLOW["url"]
    while True:
        if _MLFLOW["proc"].poll() is not None:
            pytest.fail("mlflow server exited: " + (_MLFLOW["dir"] / "server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() - _MLFLOW["started"] > MLFLOW_BOOT_CAP_S:
            pytest.fail(f"mlflow server alive but not healthy after {MLFLOW_BOOT_CAP_S} s: "
                        + (_MLFLOW["dir"] / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url
