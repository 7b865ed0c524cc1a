"""Fixtures of the gate and webhook tests: the tiny test architecture's versions as checkpoints (a planted
change: one classifier row negated, as tests/storage/_registry_testlib.py plants it; a benign one: an fp16
round trip), a config for them, and a real `mlflow server` (SQL backend on 127.0.0.1) that sends registry
webhooks to loopback receivers."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from flows.deploy import api_healthy
from tests.storage._registry_testlib import ARCH, tiny_model

PLANTED = 7
TINY = {"probe": {"crops_per_image": 3, "resolution": 64},
        "visualization": {"resolution": 32, "steps": 2, "seeds": [0], "n_references": 2}}
NEURONS = [{"id": "planted", "kind": "class", "layer": "classifier", "index": PLANTED, "references": "top-k"},
           {"id": "other", "kind": "class", "layer": "classifier", "index": 3, "references": "top-k"},
           {"id": "inner", "kind": "inner", "layer": "blocks.3", "index": 5}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save(model, path: Path, half: bool = False) -> Path:
    from safetensors.torch import save_file

    state = {k: (v.half().float() if half and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """champion, planted (class 7 negated) and clean (champion after an fp16 round trip) checkpoints."""
    d = tmp_path_factory.mktemp("gate-ckpt")
    return {"champion": save(tiny_model(3), d / "champion.safetensors"),
            "planted": save(tiny_model(3, negate_row=PLANTED), d / "planted.safetensors"),
            "clean": save(tiny_model(3), d / "clean.safetensors", half=True)}


def gate_config(directory: Path, champion: Path, **model) -> Path:
    cfg = {"store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                     "artifacts": "./store/artifacts"},
           "models": [{"name": "tiny", "architecture": ARCH, "champion": "1",
                       "versions": [{"version": "1", "source": f"file:{champion}"}], **TINY, "neurons": NEURONS,
                       **model}]}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------- an MLflow server that sends webhooks

@pytest.fixture(scope="session")
def webhook_mlflow_server():
    """URL of a real `mlflow server --workers 1` (SQLite backend) allowed to deliver webhooks over http to
    127.0.0.1 (MLflow's defaults allow https to public addresses only)."""
    d = Path(tempfile.mkdtemp(prefix="neuron-audit-webhook-mlflow-"))
    port = free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
               MLFLOW_WEBHOOK_CACHE_TTL="1",
               MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY="tGVh3r7KgK0xj1l3Q2oV0pWm9bq0dXg6lO6yS1x2n3o=")
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--default-artifact-root", (d / "artifacts").as_uri()],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300          # about 100 s on 2 shared cores under load
    try:
        while not api_healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not become healthy: " + (d / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(d, ignore_errors=True)
