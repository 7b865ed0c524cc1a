"""Fixtures of the dashboard tests: a real SQLite store populated through the repository API (with real
PNGs, see dash_real_store.py), an empty real store, and FastAPI test clients over them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))   # fleet_store: synthetic fleets

MLFLOW_UI = "http://mlflow-user:hunter2@127.0.0.1:5000/"
PREFECT_UI = "http://127.0.0.1:4200"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary; a missing one skips the test (fails it when CI=true)."""
    from browser import ensure_chromium

    return ensure_chromium()


@pytest.fixture(scope="session")
def populated(tmp_path_factory):
    """(store, artifacts_root) of the dashboard story; `secret.txt` lies next to the artifact root."""
    from dash_real_store import populate_real_store

    base = tmp_path_factory.mktemp("dash")
    (base / "secret.txt").write_text("TOPSECRET outside the artifact root\n")
    store, art = populate_real_store(base)
    yield store, art
    store.close()


@pytest.fixture(scope="session")
def art_root(populated) -> Path:
    return populated[1]


@pytest.fixture(scope="session")
def real_store(populated):
    return populated[0]


@pytest.fixture(scope="session")
def client(populated):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app

    store, art = populated
    with TestClient(create_app(store, art, mlflow_ui_url=MLFLOW_UI, prefect_ui_url=PREFECT_UI)) as c:
        yield c


@pytest.fixture(scope="session")
def plain_client(populated):
    """The same store without MLflow/Prefect UIs configured: run ids are shown as text."""
    from fastapi.testclient import TestClient

    from dashboards.app import create_app

    store, art = populated
    with TestClient(create_app(store, art)) as c:
        yield c


@pytest.fixture()
def empty_store(tmp_path):
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", tmp_path / "artifacts", upgrade=True)
    yield store, tmp_path / "artifacts"
    store.close()


@pytest.fixture()
def empty_client(empty_store):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app

    store, root = empty_store
    with TestClient(create_app(store, root)) as c:
        yield c
