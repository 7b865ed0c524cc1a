"""The reference window of a watched batch and the sampling design of its images.

A two-sample test needs the sampling variance of both sides. The batch's images are
independent draws (production photographs), so its mean has variance s²/n. The reference
window is not always a simple random sample, and treating it as one makes a test alarm on
batches that come from the reference distribution itself:

- The probe set (the default window) holds every probe photograph with the same crop
  geometries (the recipe of `audit.probe`: the whole image, then seeded scales, positions and
  flips). Relative to its distribution — random crops and flips of these photographs, each
  photograph equally likely — the photograph proportions are exact and carry no sampling
  error, while the crop geometries are one sample of a few shared by all photographs: the
  crops taken at one recipe slot are not independent of each other. So the independent unit
  is the recipe slot, and the reference mean's variance is the variance of the slot means
  over the number of slots (cluster-robust, `design_covariance`).
  This makes the probe window a narrow reference: it stands for "crops of these 12
  photographs", so a batch of other photographs (however ordinary) differs from it by
  construction. `watch` says so on every call that uses it (`PROBE_REFERENCE_LIMITS`).
- A folder of photographs, or the images of earlier batches, are independent images: each
  image is its own unit.

`ReferenceWindow.layers` holds the whole-layer test's rows (`layers.py`): one row per
independent photograph (a folder's images; for the probe set, each photograph's whole-image crop).

`design_covariance` is the CR1 cluster-robust covariance of a mean vector for any unit labels;
`ReferenceWindow.n_units - 1` is the degrees of freedom it rests on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReferenceWindow:
    """Per-image values of the registered neurons on the reference images, with their design."""

    values: np.ndarray                      # [m, p] one column per neuron
    units: np.ndarray                       # [m] label of each image's independent sampling unit
    names: list[str]                        # [m] image names (probe: 'chelsea#crop3')
    kind: str                               # "probe" | "folder" | "batches"
    description: str = ""
    sha256: str = ""
    meta: dict = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)   # layer -> [r, C], one row per photograph

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim == 1:
            self.values = self.values[:, None]
        self.units = np.asarray(self.units)
        if len(self.units) != len(self.values) or len(self.names) != len(self.values):
            raise ValueError(f"reference window: {len(self.values)} value rows, {len(self.units)} unit labels "
                             f"and {len(self.names)} names must agree")

    @property
    def n_units(self) -> int:
        return int(len(np.unique(self.units)))


PROBE_REFERENCE_LIMITS = (
    "the reference is the probe set (watch.reference: probe): crops of the {n} probe photographs, not "
    "photographs like production's. It can tell that a batch is unlike these photographs; it cannot tell "
    "broken inputs from a batch of other, ordinary photographs (any batch of other photographs may FAIL). "
    "Give it a real reference: `watch.reference: <folder of >= 50 production photographs>`, or "
    "`watch.reference: batches` to use the last PASS batches")


def probe_units(names: list[str]) -> np.ndarray:
    """The recipe slot ('crop3') of each probe image: crops at one slot share their geometry
    across photographs, so a slot is the probe set's independent unit (module docstring)."""
    return np.asarray([n.split("#", 1)[1] if "#" in n else n for n in names])


def image_units(n: int) -> np.ndarray:
    """Every image its own unit (a folder of photographs, earlier batches)."""
    return np.arange(n)


def _unit_sums(values: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, int, int]:
    """([U, p] each unit's sum of deviations from the column means, m, U)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    labels, inverse = np.unique(np.asarray(units), return_inverse=True)
    sums = np.zeros((len(labels), x.shape[1]))
    np.add.at(sums, inverse, x - x.mean(axis=0))
    return sums, len(x), len(labels)


def design_covariance(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """[p, p] CR1 cluster-robust covariance of the column means of `values` [m, p] when the rows
    are grouped in independent `units`: U/(U-1) * sum_u s_u s_u^T / m², with s_u the unit's sum
    of deviations from the mean. With one image per unit it is the usual S/m (ddof 1)."""
    sums, m, u = _unit_sums(values, units)
    if m < 2 or u < 2:
        return np.full((sums.shape[1], sums.shape[1]), np.inf)
    return (u / (u - 1)) * (sums.T @ sums) / m ** 2


def design_variance(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """[p] the diagonal of `design_covariance` (variance of each column mean), without the p x p matrix."""
    sums, m, u = _unit_sums(values, units)
    if m < 2 or u < 2:
        return np.full(sums.shape[1], np.inf)
    return (u / (u - 1)) * (sums ** 2).sum(axis=0) / m ** 2
