"""The drift statistics of one neuron, or of every channel of a layer at once.

The evidence kinds below are registered with their titles and sentences in
audit.drift.evidence_kinds, which is where a new kind is added.

Every distance here is computed column-wise on [N images, C channels] arrays, so that the
benign null (audit.drift.null) and the candidate are measured by literally the same code:
the null runs them on all channels of a layer, the compare on the registered one. Each is
oriented the same way: 0 when the two versions agree, larger when the neuron changed.

- `rank`       1 - Spearman correlation of the two versions' values over the probe images:
               the neuron orders the images differently (what it responds to).
- `retention`  1 - min(retention A->B, retention B->A). Retention A->B is the mean percentile,
               under B, of A's top-k probe images, rescaled so that 1 means "still B's top-k"
               and 0 "a random set". It sees a neuron that stops firing on its best images
               (top-image swaps) even when the marginal distribution and most ranks are kept.
- `magnitude`  Wasserstein-1 distance of the value distributions / A's standard deviation:
               how strongly it fires.
- `content`    distance between the centroids of A's and B's top-k probe images in a fixed
               feature space (the baseline's pooled final features), in units of the distance
               between two random k-subsets of the probe set: what the top images show.
- `spatial`    1 - mean correlation of the two versions' pooled maps over the top images of
               both: where an inner channel fires on an image.
- `margin`     class neurons: mean |change| of the class's top-1 margin (its logit minus the
               best other logit) over the images where it is the top-1 class in either
               version, in units of its logit's std: a competitor that takes the argmax away.
- `partner`    the part of the change B - A that follows ANOTHER unit of the baseline's layer
               (after removing what follows the neuron itself), in units of the neuron's std,
               when that unit explains most of the change: the neuron now also responds like
               that logit or channel (a class that absorbed another's images, a mixed channel).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

from ..multiple_testing import benjamini_hochberg, holm  # noqa: F401  (importable from here, as before)

_EPS = 1e-12

# what the null's tables measure (part of its cache key): v2 audits a saturated channel on its spatial mean
DISTANCES_VERSION = "distances-v2"
PARTNER_SHARE = 0.5        # the partner must explain at least half of the change's variance


def __getattr__(name: str):
    """`EVIDENCE_KINDS`: the names of the registered evidence kinds (audit.drift.evidence_kinds), kept
    importable from here for one release."""
    if name == "EVIDENCE_KINDS":
        from .evidence_kinds import kind_names

        return kind_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- one neuron
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when a side is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = sps.rankdata(a), sps.rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def effective_k(top_k: int, n: int) -> int:
    """The top-k size on a probe set of n images: `top_k`, but at most 10 % of the images (a
    quarter below 20 images), so that "top" stays selective on small probe sets. Every
    statistic that uses it is calibrated against the benign null at the same k, so k changes
    power, not the false-alarm rate."""
    return int(max(1, min(top_k, n // 10 if n >= 20 else max(1, n // 4))))


def top_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (stable for ties)."""
    return np.argsort(-np.asarray(v), kind="stable")[:k]


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, float]:
    """(number of images in both top-k sets, Jaccard overlap of the two sets)."""
    sa, sb = set(top_indices(a, k).tolist()), set(top_indices(b, k).tolist())
    inter = len(sa & sb)
    return inter, float(inter / len(sa | sb))


def wasserstein_norm(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance between the value distributions, in units of A's standard deviation."""
    return float(magnitude_distance(np.asarray(a, float)[:, None], np.asarray(b, float)[:, None])[0])


def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (descriptive: crops are not independent)."""
    with warnings.catch_warnings():                 # "exact calculation unsuccessful": asymptotic p is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        r = sps.ks_2samp(np.asarray(a, float), np.asarray(b, float))
    return float(r.statistic), float(r.pvalue)


def percentile_of(value: float, values: np.ndarray) -> float:
    """Fraction of `values` below `value` (ties count half), in [0, 1]."""
    v = np.asarray(values, float)
    return float((np.sum(v < value) + 0.5 * np.sum(v == value)) / len(v))


def cross_activation(viz_acts: tuple[float, float, float, float], probe_a: np.ndarray,
                     probe_b: np.ndarray) -> dict[str, float]:
    """viz_acts = (A's image under A, A's image under B, B's image under B, B's image under A).

    `cross_activation` = min(percentile of A's image under B within B's probe values,
    percentile of B's image under A within A's probe values). The self percentiles are
    returned too (a visualization that does not excite its own model says little)."""
    a_on_a, a_on_b, b_on_b, b_on_a = (float(x) for x in viz_acts)
    out = {"cross_a_in_b": percentile_of(a_on_b, probe_b), "cross_b_in_a": percentile_of(b_on_a, probe_a),
           "self_a": percentile_of(a_on_a, probe_a), "self_b": percentile_of(b_on_b, probe_b)}
    out["cross_activation"] = min(out["cross_a_in_b"], out["cross_b_in_a"])
    return out


def _mean_pairwise(x: np.ndarray, y: np.ndarray | None = None) -> float:
    if y is None:
        d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
        n = len(x)
        return float(d.sum() / (n * (n - 1))) if n > 1 else float("nan")
    return float(np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1).mean())


def visual_distance(feats_a: np.ndarray, feats_b: np.ndarray, paired: bool = False) -> float | None:
    """Distance between A's and B's visualizations over the mean seed-to-seed distance within a
    version (pooled over A and B). None when neither version has two seeds.

    paired: the rows of A and B are the same seeds in the same order; the distance is then the
    mean distance between the two versions' images of the same seed (0 when the images are
    unchanged). Otherwise it is the mean over all A-B pairs, which for two identical sets of n
    seeds is (n-1)/n, not 0."""
    fa, fb = np.atleast_2d(np.asarray(feats_a, float)), np.atleast_2d(np.asarray(feats_b, float))
    spreads = [s for s in (_mean_pairwise(fa) if len(fa) > 1 else None,
                           _mean_pairwise(fb) if len(fb) > 1 else None) if s is not None]
    if not spreads:
        return None
    spread = float(np.mean(spreads))
    if paired and fa.shape == fb.shape:
        cross = float(np.linalg.norm(fa - fb, axis=-1).mean())
    else:
        cross = _mean_pairwise(fa, fb)
    if spread <= _EPS:
        return 0.0 if cross <= _EPS else float("inf")
    return cross / spread


# ---------------------------------------------------------------- columns: [N, C]
def rank_columns(x: np.ndarray) -> np.ndarray:
    """Average ranks (1..N) of each column."""
    return sps.rankdata(np.asarray(x, float), axis=0)


def _column_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    y = y - y.mean(0)
    den = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > _EPS, (x * y).sum(0) / np.maximum(den, _EPS), np.nan)


def rank_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[C] 1 - Spearman of each column pair (nan where a column is constant)."""
    return 1.0 - _column_pearson(rank_columns(a), rank_columns(b))


def top_columns(x: np.ndarray, k: int) -> np.ndarray:
    """[k, C] indices of each column's k largest values, largest first (stable for ties)."""
    return np.argsort(-np.asarray(x), axis=0, kind="stable")[:k]


def retention(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """([C] retention A->B, [C] retention B->A).

    Retention A->B = (mean percentile under B of A's top-k images - 1/2) / (best - 1/2), where a
    percentile is rank/N and best = (2N - k + 1) / 2N is the mean percentile of a top-k set: 1
    when A's top-k are still B's top-k, about 0 for a random set, negative below the median."""
    n = a.shape[0]
    pa, pb = rank_columns(a) / n, rank_columns(b) / n
    ta, tb = top_columns(a, k), top_columns(b, k)
    cols = np.arange(a.shape[1])[None, :]
    best = (2 * n - k + 1) / (2 * n)
    span = max(best - 0.5, _EPS)
    return (pb[ta, cols].mean(0) - 0.5) / span, (pa[tb, cols].mean(0) - 0.5) / span


def retention_distance(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    r_ab, r_ba = retention(a, b, k)
    return 1.0 - np.minimum(r_ab, r_ba)


def magnitude_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[C] Wasserstein-1 distance of each column's value distribution / A's std (ddof 1)."""
    w = np.abs(np.sort(a, axis=0) - np.sort(b, axis=0)).mean(0)
    sd = a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > _EPS, w / np.maximum(sd, _EPS), np.where(w > _EPS, np.inf, 0.0))


def normalize_features(features: np.ndarray) -> np.ndarray:
    """Centered rows scaled so that their mean squared norm is 1 (the probe set's total variance)."""
    f = np.asarray(features, float)
    f = f - f.mean(0)
    scale = math.sqrt(float((f * f).sum(1).mean()))
    return f / scale if scale > _EPS else f


def content_distance(top_a: np.ndarray, top_b: np.ndarray, features: np.ndarray) -> np.ndarray:
    """[C] distance between the centroids of A's and B's top-k images (indices [k, C]) in
    `features` (normalized rows, `normalize_features`), divided by the expected distance
    between two random k-subsets of the N images, sqrt(2 (N - k) / (k (N - 1)))."""
    n = features.shape[0]
    k, c = top_a.shape
    sel = np.zeros((c, n))
    cols = np.arange(c)[None, :]
    np.add.at(sel, (np.broadcast_to(cols, top_a.shape), top_a), 1.0 / k)
    np.add.at(sel, (np.broadcast_to(cols, top_b.shape), top_b), -1.0 / k)
    diff = sel @ features                               # [C, D] centroid differences
    expected = math.sqrt(2.0 * (n - k) / (k * max(n - 1, 1))) if n > k else 1.0
    return np.linalg.norm(diff, axis=1) / max(expected, _EPS)


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > _EPS, (x * y).sum(-1) / np.maximum(den, _EPS), np.nan)


def spatial_distance(grid_a: np.ndarray, grid_b: np.ndarray, top_a: np.ndarray, top_b: np.ndarray) -> np.ndarray:
    """[C] 1 - mean correlation between A's and B's pooled maps ([N, C, G]) over each column's
    top images of both versions (indices [k, C] each); nan when fewer than two of those maps
    vary in both versions."""
    idx = np.concatenate([top_a, top_b], axis=0)                       # [2k, C]
    cols = np.arange(idx.shape[1])[None, :]
    ga = np.asarray(grid_a[idx, cols, :], float)                       # [2k, C, G]
    gb = np.asarray(grid_b[idx, cols, :], float)
    r = _row_pearson(ga, gb)                                           # [2k, C]
    valid = np.isfinite(r)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count >= 2, np.where(valid, r, 0.0).sum(0) / np.maximum(count, 1), np.nan)
    return 1.0 - mean


def top1_margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N, K] each class's logit minus the best other logit, [N] top-1 class)."""
    x = np.asarray(logits, float)
    order = np.argsort(-x, axis=1, kind="stable")[:, :2]
    rows = np.arange(x.shape[0])
    first, second = x[rows, order[:, 0]], x[rows, order[:, 1]] if x.shape[1] > 1 else np.full(x.shape[0], -np.inf)
    best_other = np.where(np.arange(x.shape[1])[None, :] == order[:, :1], second[:, None], first[:, None])
    return x - best_other, order[:, 0]


def margin_distance(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """[K] per class: mean |margin_B - margin_A| over the images whose top-1 class it is in A or
    in B, divided by the std of its logit under A; nan for a class that is top-1 nowhere."""
    ma, ta = top1_margins(logits_a)
    mb, tb = top1_margins(logits_b)
    classes = np.arange(ma.shape[1])[None, :]
    where = (ta[:, None] == classes) | (tb[:, None] == classes)          # [N, K]
    count = where.sum(0)
    sd = np.asarray(logits_a, float).std(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, (np.abs(mb - ma) * where).sum(0) / np.maximum(count, 1), np.nan)
        return np.where(sd > _EPS, mean / np.maximum(sd, _EPS), np.where(mean > _EPS, np.inf, 0.0))


def _standardized(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns centered and scaled to unit std (ddof 1; constant columns zero), their std)."""
    x = np.asarray(x, float)
    sd = x.std(0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > _EPS, (x - x.mean(0)) / np.maximum(sd, _EPS), 0.0), sd


def partner_distance(layer_a: np.ndarray, b: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([M] size, [M] partner) for the columns `columns` of the baseline layer `layer_a` ([N, C]) and their
    candidate values `b` ([N, M]): the change d = b - a is projected off the neuron's own baseline
    values; its partial correlation with every other baseline unit j (given the neuron) picks the
    partner, and the size is |partial correlation| x std(d given the neuron) / std(a): the std of the
    part of the change that follows the partner. It counts only when the partner explains at least
    PARTNER_SHARE of the change's variance (a change that is mostly another unit's response; the
    best of hundreds of chance correlations with a diffuse change does not); units nearly collinear
    with the neuron (|r| > 0.98) are not partners. Size 0 (partner -1) otherwise."""
    columns = np.asarray(columns, int)
    za, sd_a = _standardized(layer_a)
    n = za.shape[0]
    d = np.asarray(b, float) - np.asarray(layer_a, float)[:, columns]
    zd, sd_d = _standardized(d)
    r_aa = (za[:, columns].T @ za) / max(n - 1, 1)                         # [M, C]
    r_da = (zd.T @ za) / max(n - 1, 1)                                     # [M, C]
    rows = np.arange(len(columns))
    r_dc = r_da[rows, columns]
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt(np.clip(1 - r_dc ** 2, 0, None)[:, None] * np.clip(1 - r_aa ** 2, 0, None))
        partial = np.where(den > 1e-9, (r_da - r_dc[:, None] * r_aa) / np.maximum(den, 1e-9), 0.0)
    partial[np.abs(r_aa) > 0.98] = 0.0
    partial[rows, columns] = 0.0
    partial[:, sd_a <= _EPS] = 0.0
    best = np.argmax(np.abs(partial), axis=1)
    own_sd = sd_a[columns]
    with np.errstate(invalid="ignore", divide="ignore"):
        size = np.abs(partial[rows, best]) * sd_d * np.sqrt(np.clip(1 - r_dc ** 2, 0, None)) / np.maximum(own_sd, _EPS)
    explained = partial[rows, best] ** 2 >= PARTNER_SHARE
    size = np.where((sd_d > _EPS) & (own_sd > _EPS) & explained, size, 0.0)
    return size, np.where((sd_d > _EPS) & explained, best, -1)


# ---------------------------------------------------------------- channel identity, multiplicity, intervals
def correlation_matrix(acts_a: np.ndarray, acts_b: np.ndarray, method: str = "spearman") -> np.ndarray:
    """[C_a, C_b] correlations between the channels of A and of B over the probe images
    (constant channels correlate 0 with everything)."""
    a, b = np.asarray(acts_a, float), np.asarray(acts_b, float)
    if method == "spearman":
        a, b = rank_columns(a), rank_columns(b)
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (a.T @ b) / np.outer(na, nb)
    return np.nan_to_num(c, nan=0.0)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
