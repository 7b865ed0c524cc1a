"""Fixtures of the storage tests: a SQLite file database, a real PostgreSQL server (marker `postgres`),
and a real `mlflow server` (session-scoped; started right after collection so that it boots while
the other tests run)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _storage_testlib import make_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- PostgreSQL
def _initdb() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else None


def _install_postgres() -> str | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and apt-get (as root) is not available to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-400:]}"
    return None


def _as_postgres(cmd: str) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        return subprocess.run(["su", "postgres", "-c", cmd], capture_output=True, text=True, timeout=120)
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def pg_server():
    """Base URL (`postgresql+psycopg://postgres@127.0.0.1:PORT`) of a throwaway PostgreSQL server."""
    if _initdb() is None:
        why = _install_postgres()
        if why or _initdb() is None:
            pytest.skip(why or "PostgreSQL install gave no initdb")
    bindir = str(Path(_initdb()).parent)
    d = tempfile.mkdtemp(prefix="neuron-audit-pg-")
    os.chmod(d, 0o755)
    if os.geteuid() == 0:
        shutil.chown(d, "postgres", "postgres")
    port = free_port()
    r = _as_postgres(f"{bindir}/initdb -D {d}/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8")
    if r.returncode != 0:
        pytest.skip(f"initdb failed: {r.stderr.strip()[-400:]}")
    r = _as_postgres(f"{bindir}/pg_ctl -D {d}/data -l {d}/log -o '-c listen_addresses=127.0.0.1 -p {port} -k {d} "
                     f"-c fsync=off -c max_connections=50' -w start")
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {r.stderr.strip()[-400:]} {Path(d, 'log').read_text()[-400:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(f"{bindir}/pg_ctl -D {d}/data -m fast -w stop")
        shutil.rmtree(d, ignore_errors=True)


def _new_pg_database(base: str) -> tuple[str, str]:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}", name


def _drop_pg_database(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(scope="session")
def mlflow_server():
    """URL of a real `mlflow server --workers 1` (sqlite backend, file artifact root), healthy."""
    _start_mlflow_server()
    deadline = _MLFLOW["started"] + 90
    url = _MLFLOW["url"]
    while True:
        if _MLFLOW["proc"].poll() is not None:
            pytest.fail("mlflow server exited: " + (_MLFLOW["dir"] / "server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("mlflow server not healthy after 90 s: " + (_MLFLOW["dir"] / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url
