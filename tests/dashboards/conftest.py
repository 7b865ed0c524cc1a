"""Fixtures for the dashboard tests: a populated fake store with real PNGs, an empty one, clients."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dash_fake_store import FakeStore  # noqa: E402

MLFLOW_UI = "http://mlflow-user:hunter2@127.0.0.1:5000/"
PREFECT_UI = "http://127.0.0.1:4200"


@pytest.fixture(scope="session")
def art_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("dash")
    root = base / "artifacts"
    root.mkdir()
    (base / "secret.txt").write_text("TOPSECRET outside the artifact root\n")
    return root


@pytest.fixture(scope="session")
def fake_store(art_root) -> FakeStore:
    return FakeStore(art_root)


@pytest.fixture(scope="session")
def client(fake_store, art_root):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app

    app = create_app(fake_store, art_root, mlflow_ui_url=MLFLOW_UI, prefect_ui_url=PREFECT_UI)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def empty_client(tmp_path):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app

    root = tmp_path / "artifacts"
    root.mkdir()
    with TestClient(create_app(FakeStore(root, empty=True), root)) as c:
        yield c
