"""Fixtures of the watch tests: a tiny real config (Lite0, a small probe set), batch folders
written from the built-in photographs (random crops: in distribution; blurred: a planted shift),
a loopback webhook receiver and Prefect under prefect_test_harness."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFilter

NEURONS = [
    {"id": "egyptian-cat", "kind": "class", "layer": "classifier", "index": 285},
    {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967},
    {"id": "b2-c5", "kind": "inner", "layer": "blocks.2", "index": 5},
    {"id": "b3-c40", "kind": "inner", "layer": "blocks.3", "index": 40},
    {"id": "b5-c17", "kind": "inner", "layer": "blocks.5", "index": 17},
]


def write_config(directory: Path, webhook: str | None = None, watch: dict | None = None,
                 mlflow: str = "sqlite:///./store/mlflow.db") -> Path:
    cfg = {"store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": mlflow,
                     "artifacts": "./store/artifacts"},
           "alerts": {"webhook": webhook},
           "models": [{"name": "lite0", "architecture": "efficientnet_lite0", "champion": "1",
                       "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"}],
                       "probe_set": "builtin:samples", "probe": {"crops_per_image": 12, "resolution": 64},
                       "watch": {"min_images": 12, "settle_seconds": 0, **(watch or {})},
                       "neurons": NEURONS}]}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_batch(folder: Path, sample_images: dict, seed: int, n: int = 48, blur: float = 0.0) -> Path:
    """n random crops (and flips) of the built-in photographs as PNG files; `blur`: Gaussian radius."""
    rng = np.random.default_rng(seed)
    photos = list(sample_images.values())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[int(rng.integers(len(photos)))]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.35, 0.9))
        x, y = int(rng.uniform() * (w - side)), int(rng.uniform() * (h - side))
        crop = img.crop((x, y, x + side, y + side)).resize((96, 96), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if blur:
            crop = crop.filter(ImageFilter.GaussianBlur(blur))
        crop.save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow tracking store for the session (creating its tables costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def batches(tmp_path_factory, sample_images) -> dict[str, Path]:
    """clean (in distribution), blurred (radius 4 on 96 px crops, 2 bad files added), empty."""
    root = tmp_path_factory.mktemp("batches")
    out = {"clean": write_batch(root / "clean", sample_images, seed=11),
           "blurred": write_batch(root / "blurred", sample_images, seed=12, blur=4.0)}
    (out["blurred"] / "broken.jpg").write_bytes(b"not an image")
    Image.new("L", (40, 40), 128).save(out["blurred"] / "grey.png")
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    (out["empty"] / "notes.txt").write_text("no images here")
    return out


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """A real HTTP server on 127.0.0.1 that records the JSON posted to it."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    srv.received = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    yield srv
    srv.shutdown()


@pytest.fixture(scope="session")
def watch_prefect():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
