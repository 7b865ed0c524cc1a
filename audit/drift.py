"""Paired drift statistics between two versions A (baseline) and B (candidate) of a
model on the same probe images, and PASS/WARN/FAIL verdicts.

Statistics per neuron (values: spatial max for inner neurons, the logit for classes):
- function     `spearman`: rank correlation of A's and B's values over the probe images.
- selectivity  `topk_jaccard`: Jaccard overlap of the top-k probe images, with
               `topk_p_value` = P(overlap >= observed) for two random k-subsets
               (hypergeometric): small means "still far more overlap than chance".
               k = min(thresholds.top_k, 10 % of the probe set).
- magnitude    `wasserstein_norm`: W1 distance of the value distributions divided by
               A's standard deviation; `ks`/`ks_p_value` (two-sample KS) as extras.
- visuals      `cross_activation`: percentile of A's visualization under B within B's
               probe values, and of B's visualization under A within A's probe values;
               the min of the two, in [0, 1]. `visual_distance`: mean distance between
               A's and B's visualizations in a fixed model's features (same seed with same
               seed when both versions have them), divided by the mean seed-to-seed distance
               within a version (None with a single seed).

Verdicts rest on effect sizes with confidence intervals, not on p-values alone. A paired
bootstrap over the probe images (fixed seed; single images by default, or whole source
photographs with all their crops with `cluster_bootstrap`, see ThresholdsConfig) gives the
sampling distribution of Spearman (on Fisher's z scale),
Jaccard and W/sigma. For each neuron and level (fail/warn) the null hypothesis is "the
neuron is within the thresholds": spearman >= t_s AND jaccard >= t_j AND W/sigma <= t_w.
Each part gets a one-sided p-value from the normal approximation of its bootstrap
distribution (continuous, so it is not floored at 1/(B+1)), combined within the neuron
by Bonferroni (x3). Across neurons, FAIL uses Holm (family-wise error <= alpha: a FAIL
pages someone) and WARN uses Benjamini-Hochberg (false discovery rate <= alpha). A
neuron is FAIL when its Holm-adjusted fail p-value < alpha, else WARN when its
BH-adjusted warn p-value < alpha or a visual statistic is beyond its warn threshold,
else PASS.

Identity: when an inner neuron's own Spearman is below the warn threshold, the layer's
channels are matched between versions (Spearman correlation matrix of the spatial-max
layer activations, Hungarian assignment). If the neuron's channel is assigned to another
index whose correlation is at least `identity_match_spearman`, the function moved rather
than changed: the statistics are computed against the matched channel and
`matched_index` is reported. Class neurons are never re-matched (a logit's index is its
label); for them the reason names the candidate logit that now behaves like the
baseline's.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtr
from torch import nn

from .config import ThresholdsConfig
from .probe import ProbeSet
from .records import DriftResult, NeuronTarget
from .stats import layer_activations_full, neuron_activations

_EPS = 1e-12
_Z_CLIP = 0.999999


# ---------------------------------------------------------------- single statistics
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when a side is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = sps.rankdata(a), sps.rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def effective_k(top_k: int, n: int) -> int:
    return int(max(1, min(top_k, n // 10 if n >= 20 else max(1, n // 4))))


def top_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (stable for ties)."""
    return np.argsort(-np.asarray(v), kind="stable")[:k]


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, float, float]:
    """(overlap, Jaccard, hypergeometric p-value of an overlap >= observed by chance)."""
    n = len(a)
    sa, sb = set(top_indices(a, k).tolist()), set(top_indices(b, k).tolist())
    inter = len(sa & sb)
    jac = inter / len(sa | sb)
    p = float(sps.hypergeom(n, k, k).sf(inter - 1))
    return inter, float(jac), p


def wasserstein_norm(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance between the value distributions, in units of A's standard deviation."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = float(sps.wasserstein_distance(a, b))
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    if sd <= _EPS:
        return 0.0 if w <= _EPS else float("inf")
    return w / sd


def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
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


def visual_features(images: list[np.ndarray], feature_model: nn.Module, batch_size: int = 16) -> np.ndarray:
    """[len(images), D] penultimate features of uint8 HxWx3 images in a fixed timm model at its
    input size (`audit.quality.penultimate_features`)."""
    from .models import model_input_size
    from .quality import penultimate_features

    return penultimate_features(feature_model, images, model_input_size(feature_model), batch=batch_size)


# ---------------------------------------------------------------- matching
def _rank_columns(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x, axis=0)


def correlation_matrix(acts_a: np.ndarray, acts_b: np.ndarray, method: str = "spearman") -> np.ndarray:
    """[C_a, C_b] correlations between the channels of A and of B over the probe images
    (constant channels correlate 0 with everything)."""
    a, b = np.asarray(acts_a, float), np.asarray(acts_b, float)
    if method == "spearman":
        a, b = _rank_columns(a), _rank_columns(b)
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (a.T @ b) / np.outer(na, nb)
    return np.nan_to_num(c, nan=0.0)


def match_channels(acts_a: np.ndarray, acts_b: np.ndarray, method: str = "spearman") -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of A's channels to B's by correlation. Returns (assignment[C]:
    B's channel for each A channel, correlation matrix)."""
    corr = correlation_matrix(acts_a, acts_b, method)
    rows, cols = linear_sum_assignment(-corr)
    assignment = np.full(corr.shape[0], -1, dtype=np.int64)
    assignment[rows] = cols
    return assignment, corr


# ---------------------------------------------------------------- multiplicity
def _adjust_sorted(pvalues, adjust) -> np.ndarray:
    """Apply `adjust(sorted p-values, m)` and return the adjusted values in the input order."""
    p = np.asarray(pvalues, float)
    if len(p) == 0:
        return p
    order = np.argsort(p, kind="stable")
    out = np.empty(len(p))
    out[order] = adjust(p[order], len(p))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control)."""
    return _adjust_sorted(pvalues, lambda ps, m: np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps)))


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate control)."""
    return _adjust_sorted(pvalues, lambda ps, m: np.minimum(
        1.0, np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]))


# ---------------------------------------------------------------- bootstrap
def bootstrap_indices(n: int, n_boot: int, seed: int = 0, groups: list[str] | None = None) -> np.ndarray:
    """[n_boot, n] paired resampling indices. With `groups` of equal size (>= 5 groups),
    whole groups (a photograph and all its crops) are resampled; otherwise single images."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
        sizes = {len(m) for m in members}
        if len(labels) >= 5 and len(sizes) == 1:
            mat = np.stack(members)                                  # [G, size]
            pick = rng.integers(0, len(labels), size=(n_boot, len(labels)))
            return mat[pick].reshape(n_boot, -1)
    return rng.integers(0, n, size=(n_boot, n))


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(1) / np.maximum(den, _EPS), np.nan)


def bootstrap_statistics(a: np.ndarray, b: np.ndarray, idx: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Spearman, top-k Jaccard and W/sigma_A on each paired resample (vectorized)."""
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


def _p_below(estimate: float, boot: np.ndarray, threshold: float, transform=None) -> float:
    """One-sided p-value of H0 'statistic >= threshold' from the normal approximation of
    the bootstrap distribution (bootstrap standard error around the estimate)."""
    f = transform or (lambda v: v)
    boot = np.asarray(boot, float)
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(estimate):
        return 1.0
    est, thr = f(estimate), f(threshold)
    se = float(np.std(f(boot), ddof=1)) if len(boot) > 1 else 0.0
    if se <= 1e-9:
        return 0.0 if est < thr else 1.0
    return float(ndtr((est - thr) / se))


def _fisher(v):
    return np.arctanh(np.clip(v, -_Z_CLIP, _Z_CLIP))


def _ci(boot: np.ndarray, alpha: float) -> list[float]:
    b = np.asarray(boot, float)
    b = b[np.isfinite(b)]
    if len(b) == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(b, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------- per neuron
@dataclass
class NeuronComparison:
    target: NeuronTarget
    statistics: dict[str, float | None]
    ci: dict[str, list[float]]
    p_fail: float
    p_warn: float
    matched_index: int | None = None
    notes: dict = field(default_factory=dict)
    visual_flags: list[str] = field(default_factory=list)


def compare_neuron(target: NeuronTarget, a: np.ndarray, b: np.ndarray, thresholds: ThresholdsConfig,
                   idx: np.ndarray, names: list[str] | None = None, matched_index: int | None = None,
                   visual_features_ab: tuple[np.ndarray, np.ndarray] | None = None,
                   viz_acts: tuple[float, float, float, float] | None = None,
                   visual_paired: bool = False) -> NeuronComparison:
    """All statistics, bootstrap intervals and the two per-neuron p-values of one neuron."""
    t = thresholds
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    k = effective_k(t.top_k, n)
    rho = spearman(a, b)
    inter, jac, p_hyper = topk_overlap(a, b, k)
    wn = wasserstein_norm(a, b)
    ks_stat, ks_p = ks(a, b)
    st: dict[str, float | None] = {
        "spearman": rho, "topk_jaccard": jac, "topk_p_value": p_hyper, "wasserstein_norm": wn,
        "cross_activation": None, "visual_distance": None,
        "ks": ks_stat, "ks_p_value": ks_p, "topk_k": float(k), "topk_overlap": float(inter),
        "mean_a": float(a.mean()), "mean_b": float(b.mean()), "std_a": float(a.std(ddof=1)) if n > 1 else 0.0,
        "std_b": float(b.std(ddof=1)) if n > 1 else 0.0, "n": float(n)}
    notes: dict = {}
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if const_a or const_b:
        # No ranking to compare: identical constants pass, anything else is a change of function.
        same = const_a and const_b and abs(a[0] - b[0]) <= 1e-6 * max(1.0, abs(a[0]))
        notes["constant"] = "both" if const_a and const_b else ("baseline" if const_a else "candidate")
        st["spearman"] = 1.0 if same else 0.0
        p_fail = p_warn = 1.0 if same else 0.0
        ci = {}
    else:
        boot = bootstrap_statistics(a, b, idx, k)
        ci = {key: _ci(v, t.alpha) for key, v in boot.items()}
        p_parts_fail = [_p_below(rho, boot["spearman"], t.spearman_fail, _fisher),
                        _p_below(jac, boot["topk_jaccard"], t.topk_jaccard_fail),
                        _p_below(-wn, -boot["wasserstein_norm"], -t.wasserstein_fail)]
        p_parts_warn = [_p_below(rho, boot["spearman"], t.spearman_warn, _fisher),
                        _p_below(jac, boot["topk_jaccard"], t.topk_jaccard_warn),
                        _p_below(-wn, -boot["wasserstein_norm"], -t.wasserstein_warn)]
        p_fail = min(1.0, 3 * min(p_parts_fail))
        p_warn = min(1.0, 3 * min(p_parts_warn))
        notes["p_parts_fail"] = p_parts_fail
    flags = []
    if viz_acts is not None:
        ca = cross_activation(viz_acts, a, b)
        st["cross_activation"] = ca["cross_activation"]
        st.update({f"viz_{k_}": v for k_, v in ca.items() if k_ != "cross_activation"})
        # Only meaningful when each visualization excites its own version.
        if ca["cross_activation"] < t.cross_activation_warn and min(ca["self_a"], ca["self_b"]) >= t.cross_activation_warn:
            flags.append(f"cross-activation {ca['cross_activation']:.2f} < {t.cross_activation_warn:.2f}")
    if visual_features_ab is not None:
        vd = visual_distance(*visual_features_ab, paired=visual_paired)
        st["visual_distance"] = vd
        if vd is not None and vd > t.visual_distance_warn:
            flags.append(f"visualizations differ: distance {vd:.1f}x seed spread > {t.visual_distance_warn:.1f}")
    if names is not None:
        top_a, top_b = set(top_indices(a, k).tolist()), top_indices(b, k)
        new = [names[i] for i in top_b if i not in top_a]
        notes["top_b_new"] = new[:3]
        notes["top_b"] = [names[i] for i in top_b[:3]]
    return NeuronComparison(target, st, ci, p_fail, p_warn, matched_index, notes, flags)


def _fmt_ci(ci: dict, key: str) -> str:
    v = ci.get(key)
    return f" [{v[0]:.2f}, {v[1]:.2f}]" if v and all(map(math.isfinite, v)) else ""


def _reason(c: NeuronComparison, verdict: str, t: ThresholdsConfig) -> str:
    st, ci = c.statistics, c.ci
    what = "logit" if c.target.kind == "class" else "channel"
    k, ov = int(st["topk_k"]), int(st["topk_overlap"])
    rho, jac, wn = st["spearman"], st["topk_jaccard"], st["wasserstein_norm"]
    core = (f"Spearman {rho:.2f}{_fmt_ci(ci, 'spearman')}; top-{k} overlap {ov}/{k}; "
            f"W/sigma {wn:.2f}{_fmt_ci(ci, 'wasserstein_norm')}")
    prefix = ""
    if c.matched_index is not None:
        prefix = (f"channel moved to index {c.matched_index} (matched Spearman {rho:.2f}); "
                  f"update the registry index; ")
    if "constant" in c.notes:
        if verdict == "PASS":
            return f"{what} is constant on the probe set in both versions (dead channel)"
        return f"{what} is constant on the probe set in the {c.notes['constant']} version: it no longer responds to inputs"
    if verdict == "PASS":
        return prefix + "function preserved: " + core
    fail_t = verdict == "FAIL"
    ts, tj, tw = ((t.spearman_fail, t.topk_jaccard_fail, t.wasserstein_fail) if fail_t
                  else (t.spearman_warn, t.topk_jaccard_warn, t.wasserstein_warn))
    parts = []
    if rho < ts or jac < tj:
        lead = f"{what} now fires on different images: Spearman {rho:.2f}{_fmt_ci(ci, 'spearman')}"
        lead += f" < {ts:.2f}" if rho < ts else ""
        lead += f"; top-{k} overlap {ov}/{k}"
        if c.notes.get("top_b_new"):
            lead += "; top images now " + ", ".join(repr(x) for x in c.notes["top_b_new"])
        parts.append(lead)
    if wn > tw:
        parts.append(f"activation magnitude shifted: W/sigma {wn:.2f}{_fmt_ci(ci, 'wasserstein_norm')} > {tw:.2f} "
                     f"(mean {st['mean_a']:.2f} -> {st['mean_b']:.2f}, std {st['std_a']:.2f} -> {st['std_b']:.2f})")
    if c.notes.get("similar"):
        parts.append(c.notes["similar"])
    parts.extend(c.visual_flags)
    if not parts:
        parts.append("borderline: " + core)
    elif verdict == "WARN" and (rho < t.spearman_fail or jac < t.topk_jaccard_fail or wn > t.wasserstein_fail):
        parts.append("beyond the FAIL thresholds but not significant after Holm correction")
    return prefix + "; ".join(parts)


def assign_verdicts(comparisons: list[NeuronComparison], thresholds: ThresholdsConfig) -> list[DriftResult]:
    """FAIL: Holm-adjusted fail p-value < alpha; WARN: BH-adjusted warn p-value < alpha or a
    visual flag; else PASS. Adjusted p-values are returned in `statistics`."""
    a = thresholds.alpha
    p_fail = holm([c.p_fail for c in comparisons])
    p_warn = benjamini_hochberg([c.p_warn for c in comparisons])
    out = []
    for c, pf, pw in zip(comparisons, p_fail, p_warn):
        if pf < a:
            verdict = "FAIL"
        elif pw < a or c.visual_flags:
            verdict = "WARN"
        else:
            verdict = "PASS"
        st = dict(c.statistics)
        st["p_fail_holm"], st["p_warn_bh"] = float(pf), float(pw)
        out.append(DriftResult(neuron_id=c.target.neuron_id, layer=c.target.layer, index=c.target.index,
                               kind=c.target.kind, verdict=verdict, statistics=st, matched_index=c.matched_index,
                               reason=_reason(c, verdict, thresholds), ci=c.ci))
    return out


# ---------------------------------------------------------------- top level
def compare_versions(model_a: nn.Module, model_b: nn.Module, probe: ProbeSet, targets: list[NeuronTarget],
                     thresholds: ThresholdsConfig | None = None,
                     visual_features_a: dict[str, np.ndarray] | None = None,
                     visual_features_b: dict[str, np.ndarray] | None = None,
                     viz_acts: dict[str, tuple[float, float, float, float]] | None = None,
                     probe_cache_key: tuple[str, str] | None = None, batch_size: int = 32,
                     visual_paired: Collection[str] = ()) -> list[DriftResult]:
    """Drift verdicts of `targets` from model_a (baseline) to model_b (candidate) on `probe`.

    `visual_features_*`: neuron_id -> [seeds, D] features of the visualizations; `visual_paired`:
    the neuron ids whose two feature arrays are the same seeds in the same order (`visual_distance`);
    `viz_acts`: neuron_id -> (A's image under A, A's image under B, B's image under B,
    B's image under A); `probe_cache_key`: the two weights SHA-256 (skips rehashing)."""
    t = thresholds or ThresholdsConfig()
    key_a, key_b = probe_cache_key if probe_cache_key else (None, None)
    acts_a = neuron_activations(model_a, probe, targets, batch_size=batch_size, weights_key=key_a)
    acts_b = neuron_activations(model_b, probe, targets, batch_size=batch_size, weights_key=key_b)
    idx = bootstrap_indices(len(probe.names), t.bootstrap, t.bootstrap_seed,
                            probe.groups if t.cluster_bootstrap else None)
    layer_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    matchings: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def layer_pair(layer: str):
        if layer not in layer_cache:
            la = layer_activations_full(model_a, probe, [layer], batch_size, weights_key=key_a)[layer]
            lb = layer_activations_full(model_b, probe, [layer], batch_size, weights_key=key_b)[layer]
            layer_cache[layer] = (la.max, lb.max)
        return layer_cache[layer]

    comparisons = []
    for tg in targets:
        a, b = acts_a[tg.neuron_id].max, acts_b[tg.neuron_id].max
        vf = None
        if visual_features_a and visual_features_b and tg.neuron_id in visual_features_a \
                and tg.neuron_id in visual_features_b:
            vf = (visual_features_a[tg.neuron_id], visual_features_b[tg.neuron_id])
        va = viz_acts.get(tg.neuron_id) if viz_acts else None
        rho = spearman(a, b)
        matched = None
        similar = None
        if not (np.isfinite(rho) and rho >= t.spearman_warn):
            if tg.kind == "inner":
                if tg.layer not in matchings:
                    la, lb = layer_pair(tg.layer)
                    matchings[tg.layer] = match_channels(la, lb)
                assignment, corr = matchings[tg.layer]
                j = int(assignment[tg.index])
                if j >= 0 and j != tg.index and corr[tg.index, j] >= t.identity_match_spearman \
                        and corr[tg.index, j] > (rho if np.isfinite(rho) else -1):
                    matched = j
                    b = layer_pair(tg.layer)[1][:, j]
            else:
                la, lb = layer_pair(tg.layer)
                corr_row = correlation_matrix(la[:, [tg.index]], lb)[0]
                j = int(np.argmax(corr_row))
                if j != tg.index and corr_row[j] >= t.identity_match_spearman:
                    similar = (f"the candidate's logit {j} now behaves like the baseline's logit {tg.index} "
                               f"(Spearman {corr_row[j]:.2f}): class rows swapped or relabelled?")
        c = compare_neuron(tg, a, b, t, idx, probe.names, matched, vf, va, tg.neuron_id in visual_paired)
        if similar:
            c.notes["similar"] = similar
        comparisons.append(c)
    return assign_verdicts(comparisons, t)
