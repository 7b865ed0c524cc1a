"""Whole-layer test of a batch: where broken inputs show most.

A registered neuron sees a few directions of the model's representation; a blur, a channel swap or
a codec change moves hundreds of channels a little each, often none of them beyond its own noise
against a varied reference. This test looks at whole layers at once: for each layer, the spatial
mean of every channel on every photograph (for the model's final feature layer, that is the
pooled embedding the classifier reads).

Unit: the photograph, on both sides. The reference rows are independent photographs (a folder,
earlier batches, or one whole-image crop per probe photograph), so under "same distribution" the
batch's and the reference's photographs are exchangeable and a permutation of photographs is an
exact null.

Statistic per layer: T = mean over channels of (mean_batch - mean_reference)² / s², with s² the
channel's variance over all photographs of both sides (invariant under permutation, so every
permutation uses the same scale): a mean shift spread over many channels adds up in T while each
channel alone is within its noise. T's permutation distribution (`n_permutations` shuffles of
photographs) is fitted with a scaled χ² of the same mean and variance (T is a sum of squares), so
p-values below 1/n_permutations, as Holm's first steps need, are an extrapolation of a fitted
law rather than a count of zero; `p_permutation` is the plain count (floor 1/(B+1)) beside it.
The layers of a batch are one family: their p-value is the Bonferroni minimum over layers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import chdtrc

_EPS = 1e-12
LAYERS_ID = "(layers)"


@dataclass
class LayerShift:
    """One layer's whole-layer test."""

    layer: str
    channels: int                # channels tested (constant channels are left out)
    statistic: float             # T: mean squared standardised mean difference
    null_mean: float             # mean of T over the permutations (T / null_mean ≈ 1 without a shift)
    ratio: float
    p_value: float               # scaled-χ² fit to the permutation distribution
    p_permutation: float         # (1 + #{T_perm >= T}) / (B + 1)
    top_channels: list[list[float]] = field(default_factory=list)   # [channel, standardised difference]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayersShift:
    """Every tested layer of a batch, and their family p-value (Bonferroni over layers)."""

    layers: list[LayerShift]
    p_value: float
    n_batch: int
    n_reference: int
    n_permutations: int

    @property
    def strongest(self) -> LayerShift:
        return min(self.layers, key=lambda s: s.p_value)

    def as_dict(self) -> dict:
        return {"p_value": self.p_value, "n_batch": self.n_batch, "n_reference": self.n_reference,
                "n_permutations": self.n_permutations, "layers": [s.as_dict() for s in self.layers]}


def _assignments(n: int, m: int, n_permutations: int, seed: int) -> np.ndarray:
    """[B, n + m] 0/1 rows: which photographs a permutation puts in the batch (exactly n of them)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_permutations, n + m)), axis=1)[:, :n]
    out = np.zeros((n_permutations, n + m))
    np.put_along_axis(out, order, 1.0, axis=1)
    return out


def _scaled_chi2_sf(t: float, null: np.ndarray) -> float:
    mean, var = float(null.mean()), float(null.var(ddof=1))
    if mean <= _EPS or var <= _EPS:
        return 1.0 if t <= mean else 0.0
    scale, dof = var / (2 * mean), 2 * mean * mean / var
    return float(chdtrc(dof, t / scale))                  # chi-square(dof) survival function


def layer_shift(layer: str, batch: np.ndarray, reference: np.ndarray, assignments: np.ndarray,
                top: int = 5) -> LayerShift:
    """One layer's test (module docstring); `assignments` from `_assignments(n, m, ...)`."""
    b = np.asarray(batch, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, m = len(b), len(r)
    both = np.concatenate([b, r])
    sd = both.std(axis=0, ddof=1)
    keep = sd > _EPS * max(1.0, float(np.abs(both).max(initial=0.0)))
    z = (both[:, keep] - both[:, keep].mean(axis=0)) / sd[keep]
    if z.shape[1] == 0:
        return LayerShift(layer, 0, 0.0, 0.0, float("nan"), 1.0, 1.0)
    total = z.sum(axis=0)

    def stat(sum_batch: np.ndarray) -> np.ndarray:
        diff = sum_batch / n - (total - sum_batch) / m
        return (diff * diff).mean(axis=-1)

    observed = z[:n].sum(axis=0)
    t = float(stat(observed))
    null = stat(assignments @ z)
    diff = observed / n - (total - observed) / m
    channels = np.flatnonzero(keep)
    order = np.argsort(-np.abs(diff), kind="stable")[:top]
    return LayerShift(layer=layer, channels=int(keep.sum()), statistic=t, null_mean=float(null.mean()),
                      ratio=t / float(null.mean()) if null.mean() > _EPS else float("nan"),
                      p_value=_scaled_chi2_sf(t, null),
                      p_permutation=float((1 + np.sum(null >= t)) / (len(null) + 1)),
                      top_channels=[[int(channels[i]), float(diff[i])] for i in order])


def layers_shift(batch: dict[str, np.ndarray], reference: dict[str, np.ndarray], n_permutations: int = 500,
                 seed: int = 0) -> LayersShift:
    """The whole-layer test of every layer in `reference` (each [m, C], one row per reference
    photograph) against the batch's rows of the same layers ([n, C], one per batch photograph);
    the same permutations for every layer."""
    names = sorted(reference)
    if not names:
        raise ValueError("the whole-layer test needs at least one layer")
    n, m = len(batch[names[0]]), len(reference[names[0]])
    if n < 2 or m < 2:
        raise ValueError(f"the whole-layer test needs at least 2 photographs on each side (batch {n}, reference {m})")
    assignments = _assignments(n, m, n_permutations, seed)
    shifts = [layer_shift(name, batch[name], reference[name], assignments) for name in names]
    p = min(1.0, len(shifts) * min(s.p_value for s in shifts))
    return LayersShift(shifts, p, n, m, n_permutations)
