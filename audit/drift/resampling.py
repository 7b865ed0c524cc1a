"""Resampling with the right unit: the source photograph, not the crop.

Crops of one photograph are not independent: their values move together, so a bootstrap
or permutation over crops shrinks every interval as `probe.crops_per_image` grows while the
information (the number of photographs) stays the same. Everything here resamples or
permutes whole photographs (all their crops together).

- `cluster_bootstrap_indices`: paired bootstrap resamples of whole photographs, for the
  intervals of the effect sizes over photographs.
- `bootstrap_statistics`: Spearman, top-k Jaccard and W/sigma on each resample (vectorized).
- `topk_overlap_p_value`: P(two top-k sets overlap at least this much by chance), with B's
  photographs permuted among A's (crop structure kept): replaces the hypergeometric p-value,
  which treats crops as exchangeable and so overstates how unlikely an overlap is.
- `content_p_value`: permutation p-value of the distance between the top-k centroids (photographs permuted).
- `photograph_folds`: held-out splits by photograph, for the moved-channel match.
- `photographs_needed` / `power_statement`: how many photographs a probe set needs before a
  change that touches a given share of images can be shown beyond the photographs at hand.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from .statistics import top_indices

_EPS = 1e-12


def photograph_labels(groups: list[str] | None, n: int) -> np.ndarray:
    """[N] integer photograph label of each probe image (each image its own when unknown)."""
    if groups is None:
        return np.arange(n)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return inverse.astype(np.int64)


def _members(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == g) for g in range(int(labels.max()) + 1)]


def cluster_bootstrap_indices(labels: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, N'] paired resampling indices drawing whole photographs with replacement.

    With equal-sized photographs (the probe recipe gives every photograph the same crops) N' = N;
    otherwise each resample is cut or cyclically padded to N images, which keeps every row a
    draw of whole photographs up to the last one."""
    rng = np.random.default_rng(seed)
    members = _members(labels)
    n, g = len(labels), len(members)
    pick = rng.integers(0, g, size=(n_boot, g))
    if len({len(m) for m in members}) == 1:
        mat = np.stack(members)                       # [G, size]
        return mat[pick].reshape(n_boot, -1)
    rows = []
    for r in range(n_boot):
        row = np.concatenate([members[j] for j in pick[r]])
        rows.append(np.resize(row, n))
    return np.stack(rows)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(1) / np.maximum(den, _EPS), np.nan)


def bootstrap_statistics(a: np.ndarray, b: np.ndarray, idx: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Spearman, top-k Jaccard and W/sigma_A on each paired resample (rows of `idx`)."""
    A, B = np.asarray(a, float)[idx], np.asarray(b, float)[idx]
    rho = _rowwise_pearson(sps.rankdata(A, axis=1), sps.rankdata(B, axis=1))
    n = A.shape[1]
    ta = np.argpartition(-A, k - 1, axis=1)[:, :k]
    tb = np.argpartition(-B, k - 1, axis=1)[:, :k]
    ma = np.zeros(A.shape, bool)
    mb = np.zeros(B.shape, bool)
    rows = np.arange(len(A))[:, None]
    ma[rows, ta] = True
    mb[rows, tb] = True
    inter = (ma & mb).sum(1)
    jac = inter / (2 * k - inter)
    w = np.abs(np.sort(A, 1) - np.sort(B, 1)).mean(1)
    sd = A.std(1, ddof=1) if n > 1 else np.zeros(len(A))
    wn = np.where(sd > _EPS, w / np.maximum(sd, _EPS), np.where(w > _EPS, np.inf, 0.0))
    return {"spearman": rho, "topk_jaccard": jac, "wasserstein_norm": wn}


def percentile_interval(boot: np.ndarray, alpha: float) -> list[float]:
    """The (alpha/2, 1 - alpha/2) percentile interval of the finite bootstrap values."""
    b = np.asarray(boot, float)
    b = b[np.isfinite(b)]
    if len(b) == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(b, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def _photograph_permutations(labels: np.ndarray, n_perm: int, seed: int) -> np.ndarray | None:
    """[n_perm, N] index maps that move every crop of a photograph to the same crop slot of
    another photograph (equal-sized photographs only; None otherwise)."""
    members = _members(labels)
    if len({len(m) for m in members}) != 1 or len(members) < 2:
        return None
    mat = np.stack(members)                                # [G, size]
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, len(labels)), np.int64)
    for r in range(n_perm):
        perm = rng.permutation(len(members))
        out[r, mat.reshape(-1)] = mat[perm].reshape(-1)
    return out


def topk_overlap_p_value(a: np.ndarray, b: np.ndarray, k: int, labels: np.ndarray, n_perm: int = 999,
                         seed: int = 0) -> float:
    """P(overlap of A's and B's top-k >= observed) when B's photographs are shuffled among A's,
    each crop moving with its photograph: small means "far more overlap than chance".

    Falls back to shuffling single images when the photographs have unequal crop counts."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ta = set(top_indices(a, k).tolist())
    observed = len(ta & set(top_indices(b, k).tolist()))
    maps = _photograph_permutations(labels, n_perm, seed)
    if maps is None:
        rng = np.random.default_rng(seed)
        maps = np.stack([rng.permutation(len(b)) for _ in range(n_perm)])
    mask = np.zeros(len(a), bool)
    mask[list(ta)] = True
    tb = np.argpartition(-b[maps], k - 1, axis=1)[:, :k]   # B's top-k in the shuffled positions
    hits = (mask[tb]).sum(1)
    return float((1 + np.sum(hits >= observed)) / (1 + n_perm))


def content_p_value(features: np.ndarray, top_a: np.ndarray, top_b: np.ndarray, n_perm: int = 999,
                    seed: int = 0, labels: np.ndarray | None = None) -> float:
    """Permutation p-value of the distance between the centroids of A's and B's top-k images
    (rows of normalized `features`). 1 when the two sets are the same images.

    The unit permuted is the photograph (`labels`: each image's source photograph): crops of one
    photograph are not exchangeable with other photographs' crops, so each photograph's share of
    the difference, c_g = (sum of its crops in A - sum of its crops in B) / k, keeps its sign or
    flips it as a whole, and p = P(||sum_g ±c_g|| >= observed). Without `labels`, every image is
    its own photograph."""
    k = len(top_a)
    ta, tb = np.asarray(top_a), np.asarray(top_b)
    unit = np.asarray(labels) if labels is not None else np.arange(len(features))
    groups, inverse = np.unique(np.concatenate([unit[ta], unit[tb]]), return_inverse=True)
    signed = np.concatenate([features[ta], -features[tb]]) / k      # [2k, D]
    share = np.zeros((len(groups), features.shape[1]))
    np.add.at(share, inverse, signed)                                # c_g
    observed = float(np.linalg.norm(share.sum(0)))
    if observed <= _EPS:
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, len(groups)))
    dist = np.linalg.norm(signs @ share, axis=1)
    return float((1 + np.sum(dist >= observed - 1e-12)) / (1 + n_perm))


def photograph_folds(labels: np.ndarray, n_folds: int = 2) -> list[np.ndarray]:
    """Boolean masks of held-out images, one per fold: photographs dealt round-robin (by label)
    into `n_folds` folds; with fewer than 2 * n_folds photographs, single images are dealt."""
    g = int(labels.max()) + 1
    unit = labels if g >= 2 * n_folds else np.arange(len(labels))
    return [(unit % n_folds) == f for f in range(n_folds)]


def changed_photographs_needed(alpha: float) -> int:
    """How many photographs must carry a change before a photograph bootstrap can show it at
    one-sided level alpha: a resample of G photographs misses all m changed ones with
    probability (1 - m/G)^G ~ exp(-m), so m >= ln(1/alpha) (3 at alpha = 0.05)."""
    return max(1, math.ceil(math.log(1.0 / alpha) - 1e-9))


def photographs_needed(fraction: float, alpha: float = 0.05, power: float = 0.8, limit: int = 100000) -> int:
    """Smallest number G of independent photographs such that a change touching `fraction` of
    all images reaches at least `changed_photographs_needed(alpha)` of them with probability
    `power` (binomial)."""
    m = changed_photographs_needed(alpha)
    g = m
    while g < limit:
        if sps.binom.sf(m - 1, g, fraction) >= power:
            return g
        g += 1
    return limit


def power_statement(n_photographs: int, fraction: float, alpha: float = 0.05, power: float = 0.8) -> tuple[bool, str]:
    """(enough, sentence): can a probe set of `n_photographs` photographs show, at the photograph
    level, a change that touches `fraction` of the images (thresholds.detect_fraction)?"""
    m = changed_photographs_needed(alpha)
    need = photographs_needed(fraction, alpha, power)
    reach = float(sps.binom.sf(m - 1, n_photographs, fraction))
    enough = n_photographs >= need
    text = (f"The probe set has {n_photographs} photographs. A change that touches {fraction:.0%} of images "
            f"reaches the {m} photographs a photograph-level claim needs with probability {reach:.2f}; "
            f"{power:.0%} power needs at least {need} photographs.")
    if not enough:
        text += (" Verdicts still flag changes against the benign null on these photographs, but a change "
                 "seen on fewer than " f"{m} of them is a fact about these photographs, not evidence that it "
                 "holds beyond them: add photographs to the probe set (not crops).")
    return enough, text
