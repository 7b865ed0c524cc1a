"""Helpers of the watch tests: a tiny real config (Lite0, a small probe set) and batch folders
written from the built-in photographs (random crops: in distribution; blurred: a planted shift)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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


