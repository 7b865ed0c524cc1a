"""Fixtures of the watch tests: batch folders written from the built-in photographs, one MLflow
store per session; the webhook receiver and the Prefect harness are tests/conftest.py's."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from watch_testlib import write_batch  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow tracking store for the session (creating its tables costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def batches(tmp_path_factory, sample_images) -> dict[str, Path]:
    """clean (in distribution), blurred (radius 4 on 96 px crops, plus an undecodable file and a greyscale one), empty."""
    root = tmp_path_factory.mktemp("batches")
    out = {"clean": write_batch(root / "clean", sample_images, seed=11),
           "blurred": write_batch(root / "blurred", sample_images, seed=12, blur=4.0)}
    (out["blurred"] / "broken.jpg").write_bytes(b"not an image")
    Image.new("L", (40, 40), 128).save(out["blurred"] / "grey.png")
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    (out["empty"] / "notes.txt").write_text("no images here")
    return out


@pytest.fixture(scope="session")
def watch_prefect(prefect_harness):
    """The session's Prefect test server (tests/conftest.py)."""
    return prefect_harness
