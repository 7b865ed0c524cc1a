"""Which values stand for a channel in a compare, and when a channel is dead.

A channel's value on a probe image is its spatial maximum. That is a poor witness for a
channel that saturates: behind a ReLU6 the spatial max of many stem channels is pinned at 6 (or
at 0) on every probe image while the spatial mean, where and how much of the image it fires on,
varies freely. Judging such a channel by its max alone called it "dead" and let any change to it
pass. So:

- a channel is dead (constant) only when every per-image statistic kept for it is constant over
  the probe images: the spatial max AND the spatial mean (the pooled map is the mean's map, read
  by the spatial evidence; with a constant max and mean it has nothing left to vary in practice);
- a channel whose spatial max is constant in the baseline but whose spatial mean varies is
  audited on its spatial mean, like any other channel.

The statistic is chosen per channel from the baseline alone and used for both versions, for the
benign null (audit.drift.null) and for the candidate (audit.drift.compare) alike, so that both are
measured on the same values.
"""
from __future__ import annotations

import numpy as np

from ..stats import LayerActivations

STATISTIC_NAMES = {"max": "spatial max", "mean": "spatial mean"}


def _constant(x: np.ndarray) -> np.ndarray:
    """[C] True where a column of x ([N, C]) is the same on every image."""
    x = np.asarray(x)
    return (x == x[:1]).all(axis=0) if x.shape[0] else np.ones(x.shape[1], bool)


def constant_channels(acts: LayerActivations) -> np.ndarray:
    """[C] True where a channel is constant on every per-image statistic (max and mean): a dead channel."""
    return _constant(acts.max) & _constant(acts.mean)


def mean_audited(baseline: LayerActivations) -> np.ndarray:
    """[C] True where a channel is audited on its spatial mean: its spatial max is constant in the
    baseline (a saturated or clipped channel) but its mean is not."""
    return _constant(baseline.max) & ~_constant(baseline.mean)


def audited_values(acts: LayerActivations, use_mean: np.ndarray) -> np.ndarray:
    """[N, C] each channel's audited statistic (`use_mean`: `mean_audited` of the baseline)."""
    return np.where(np.asarray(use_mean, bool)[None, :], acts.mean, acts.max)


def statistic_name(use_mean: bool) -> str:
    return "mean" if use_mean else "max"
