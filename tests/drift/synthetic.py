"""Synthetic activations for the drift tests: 12 photographs x 20 crops, and a benign null made the
product's way (`layer_null_distances` into a `LayerNull`) from noisy copies of the baseline."""
from __future__ import annotations

import numpy as np

from audit.config import ThresholdsConfig
from audit.drift import compare_activations
from audit.drift.null import BenignNull, LayerNull, layer_null_distances
from audit.drift.statistics import effective_k
from audit.records import NeuronTarget
from audit.stats import LayerActivations

PHOTOS, CROPS, CHANNELS, CELLS = 12, 20, 16, 16
N = PHOTOS * CROPS
NAMES = [f"photo{g}#crop{c}" for g in range(PHOTOS) for c in range(CROPS)]
GROUPS = [n.split("#")[0] for n in NAMES]
K = effective_k(ThresholdsConfig().top_k, N)


def acts(values: np.ndarray, grid: np.ndarray | None = None) -> LayerActivations:
    return LayerActivations(values.astype(np.float32), values.astype(np.float32), values.argmax(1), grid)


def null_of(base: LayerActivations, noise: float, features=None, head=False, seed=0, drop=()) -> LayerNull:
    """Ten benign variants: the baseline with Gaussian noise of `noise` x each column's std (two kinds)."""
    rng = np.random.default_rng(seed)
    sd = base.max.std(0, keepdims=True)
    tables: dict[str, list] = {}
    for j in range(10):
        scale = noise * (0.5 if j < 5 else 1.0)
        v = base.max + rng.normal(size=base.max.shape) * sd * scale
        grid = None
        if base.grid is not None:
            grid = base.grid + rng.normal(size=base.grid.shape) * base.grid.std() * scale
        for kind, d in layer_null_distances(base, acts(v, grid), K, features, head).items():
            tables.setdefault(kind, []).append(d)
    return LayerNull({k: np.stack(v) for k, v in tables.items() if k not in drop},
                     ["small"] * 5 + ["large"] * 5, [f"v{j}" for j in range(10)])


def verdict(base, cand, null: LayerNull, target: NeuronTarget, features=None, head=None, **kw):
    results = compare_activations({target.layer: base}, {target.layer: cand}, [target],
                                  BenignNull({target.layer: null}), NAMES, GROUPS, ThresholdsConfig(bootstrap=100),
                                  features=features, head=head, **kw)
    return results[0]


INNER = NeuronTarget("c0", "inner", "blocks.1", 0)
