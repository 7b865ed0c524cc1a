"""The reference window's model outputs, cached by what produced them.

Every `watch` call compares a batch with the same reference photographs through the same model;
their forward pass is the same each time. The cache key is a hash of everything the values depend
on: the weights' hash, the architecture and its `model_args`/`num_classes`, the reference images'
content hash (file bytes and preprocessing, `ProbeSet.sha256`), the neurons (layer, index, kind),
the layers of the whole-layer test, and `STATISTICS_VERSION` (bumped whenever what is computed
from the activations changes). Change any of them and the key changes: a stale entry is never
found again, so nothing is ever invalidated by hand.

Entries are `.npz` files in one folder (the store's artifacts, `cache/watch/`): neuron values
[m, p], the row names, and one [r, C] array per layer.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATISTICS_VERSION = "watch-reference-1"     # neuron: spatial max (class: logit); layers: spatial mean


@dataclass
class CachedReference:
    values: np.ndarray                  # [m, p] neuron values, columns in the key's neuron order
    names: list[str]                    # [m]
    layers: dict[str, np.ndarray]       # layer -> [r, C] spatial means on the layer test's photographs


def reference_key(*, weights_sha256: str, architecture: str, model_args: dict, num_classes: int | None,
                  images_sha256: str, neurons: list[tuple[str, int, str]], layers: list[str]) -> str:
    """The content key of a reference window's model outputs (module docstring)."""
    what = {"weights": weights_sha256, "architecture": architecture, "model_args": model_args,
            "num_classes": num_classes, "images": images_sha256, "neurons": [list(n) for n in neurons],
            "layers": sorted(layers), "statistics": STATISTICS_VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _path(directory: str | Path, key: str) -> Path:
    return Path(directory) / f"{key}.npz"


def load_reference(directory: str | Path, key: str) -> CachedReference | None:
    """The cached outputs under `key`, or None (missing or unreadable: recomputed)."""
    path = _path(directory, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            layers = {str(k)[len("layer:"):]: z[k] for k in z.files if str(k).startswith("layer:")}
            return CachedReference(z["values"], [str(n) for n in z["names"]], layers)
    except (OSError, ValueError, KeyError):
        return None


def save_reference(directory: str | Path, key: str, entry: CachedReference) -> Path:
    """Write atomically (a temporary file renamed), so a reader never sees half an entry."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = _path(folder, key)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as fh:
        np.savez(fh, values=np.asarray(entry.values), names=np.asarray(entry.names),
                 **{f"layer:{k}": np.asarray(v) for k, v in entry.layers.items()})
    os.replace(tmp, path)
    return path
