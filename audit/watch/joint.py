"""One test on the joint vector of all registered neurons: a shift spread thinly over many
neurons (each within its own noise) still moves the joint distribution.

Statistic: the maximum mean discrepancy (MMD) between the batch's and the reference's joint
values, with a Gaussian kernel on the values standardised by the reference (bandwidth: the
median distance between reference images), computed through D random Fourier features φ:
MMD² ≈ T = ||mean φ(batch) - mean φ(reference)||².

Null: under "same distribution", mean φ(batch) - mean φ(reference) has covariance
C = Σ/n + V, with Σ the image-level covariance of φ on the reference and V the design covariance
of the reference mean (`design.py`: recipe slots of the probe set, or images). T is then a
weighted sum of χ²₁ with the eigenvalues of C as weights, approximated by a scaled χ² with
matched mean and variance and an F correction for the few units V rests on. A permutation null
would treat the reference's crops as exchangeable with batch images; they are not (crops of one
recipe slot share their geometry), and that null alarms on batches drawn from the reference
distribution itself (see benchmarks/data_drift_bench.py, row "images as units").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import fdtrc

from .design import design_covariance

_EPS = 1e-12


@dataclass
class JointShift:
    mmd2: float                 # T, the random-feature MMD² estimate
    null_mean: float            # tr(C): T's expectation without a shift
    ratio: float                # T / null_mean (≈ 1 without a shift)
    p_value: float
    df_features: float          # b: effective number of χ²₁ terms
    df_reference: float         # nu: degrees of freedom of C's estimate
    bandwidth: float
    n_neurons: int

    def as_dict(self) -> dict:
        return asdict(self)


def _standardise(batch: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = reference.mean(axis=0)
    sd = reference.std(axis=0, ddof=1)
    sd = np.where(sd > _EPS, sd, 1.0)
    return (batch - mu) / sd, (reference - mu) / sd


def median_bandwidth(x: np.ndarray, max_rows: int = 400, seed: int = 0) -> float:
    """Median Euclidean distance between distinct rows (a subsample of `max_rows`)."""
    rng = np.random.default_rng(seed)
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(len(x), 1)
    med = float(np.median(np.sqrt(d2[iu]))) if len(iu[0]) else 1.0
    return med if med > _EPS else 1.0


def joint_shift(batch: np.ndarray, reference: np.ndarray, units: np.ndarray, n_features: int = 256,
                seed: int = 0) -> JointShift:
    """The joint test of `batch` [n, p] against `reference` [m, p] (module docstring)."""
    b = np.asarray(batch, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, m, p = len(b), len(r), r.shape[1]
    zb, zr = _standardise(b, r)
    bw = median_bandwidth(zr, seed=seed)
    rng = np.random.default_rng(seed)
    omega = rng.normal(size=(n_features, p)) / bw
    phase = rng.uniform(0, 2 * np.pi, n_features)
    scale = np.sqrt(2.0 / n_features)
    fb = scale * np.cos(zb @ omega.T + phase)
    fr = scale * np.cos(zr @ omega.T + phase)
    d = fb.mean(0) - fr.mean(0)
    t = float(d @ d)
    sigma_n = np.cov(fr, rowvar=False, ddof=1) / n
    v = design_covariance(fr, units)
    c = sigma_n + v
    tr, tr2 = float(np.trace(c)), float(np.sum(c * c))
    u = len(np.unique(units))
    if not np.isfinite(tr) or tr <= _EPS or u < 3:
        return JointShift(t, tr, float("nan"), float("nan"), float("nan"), float("nan"), bw, p)
    a, dof = tr2 / tr, tr * tr / tr2
    ts, tv = float(np.trace(sigma_n)), float(np.trace(v))
    nu = (ts + tv) ** 2 / (ts ** 2 / max(m - 1, 1) + tv ** 2 / max(u - 1, 1))
    p_value = float(fdtrc(dof, nu, t / (a * dof)))      # F(dof, nu) survival function
    return JointShift(mmd2=t, null_mean=tr, ratio=t / tr, p_value=p_value, df_features=dof, df_reference=nu,
                      bandwidth=bw, n_neurons=p)
