"""Per-neuron two-sample statistics of an unpaired batch against the reference window.

For one neuron with batch values b [n] and reference values r [m] (with the reference's units,
`design.py`), three parts, each a difference with a standard error from both samples' designs:

- location `shift`: (mean_b - mean_r) / sd_r, the mean change in reference standard deviations
  (Glass's delta). Its test uses the null variance (s_r²/n + V_r)·s_p²/s_r² (V_r: design
  variance of the reference mean; s_p²: the variance pooled over both samples, the efficient
  estimate under "same distribution") and a t distribution with Welch-Satterthwaite degrees of
  freedom over the pooled n+m-2 and the reference's U-1 (U units); its interval uses the batch's
  own variance. The reference's variance alone is too small when the batch holds photographs
  the reference happens to lack (a cluster of tripods for the tripod logit): on new photographs
  that made single class logits FAIL in ~2.5% of in-distribution batches, against 0.25% with
  the pooled variance (data_drift_bench's tuning split, docs/benchmarks-watch.md).
- upper tail `above`: the fraction of batch images above the reference's 90th percentile,
  against the reference's own fraction there (≈ 0.10): the batch's count against a beta-binomial
  whose fraction varies with the design variance of the reference's indicator mean (how uncertain
  the quantile's position is in the reference distribution); exact tails.
- lower tail `below`: the same below the reference's 10th percentile.

Tails catch what a mean misses (the spread grows or shrinks, a neuron fires on a new subset).
The neuron's p-value is the Bonferroni minimum of the three (x3). Descriptive extras: W1/sd_r
and the KS statistic.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import betaln, gammaln, ndtri, stdtr, stdtrit

from .design import design_variance

TAIL_LOW, TAIL_HIGH = 0.10, 0.90
_EPS = 1e-12


@dataclass
class NeuronShift:
    """What one neuron did on a batch, relative to the reference window."""

    n_batch: int
    n_reference: int
    reference_units: int
    mean_reference: float
    sd_reference: float
    mean_batch: float
    sd_batch: float
    shift: float                     # (mean_b - mean_r) / sd_r
    shift_ci: list[float]
    p_shift: float
    df: float
    q10_reference: float
    q90_reference: float
    above_reference: float           # reference fraction above its q90 (≈ 0.10)
    above: float                     # batch fraction above the reference's q90
    above_ci: list[float]
    p_above: float
    below_reference: float
    below: float
    below_ci: list[float]
    p_below: float
    p_value: float                   # Bonferroni over the three parts
    wasserstein_norm: float          # W1(b, r) / sd_r
    ks: float
    se_shift_null: float             # null standard error of mean_b - mean_r, in sd_r (power figures)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def direction(self) -> str:
        """'rose' | 'dropped' | 'spread' | 'narrowed' | 'changed shape': the dominant change."""
        tails = (self.above - self.above_reference, self.below - self.below_reference)
        if abs(self.shift) >= 0.25 or abs(tails[0] - tails[1]) >= 0.1:
            up = self.shift if abs(self.shift) >= 0.25 else tails[0] - tails[1]
            return "rose" if up > 0 else "dropped"
        if tails[0] > 0.05 and tails[1] > 0.05:
            return "spread"
        if tails[0] < -0.05 and tails[1] < -0.05:
            return "narrowed"
        return "changed shape"


def _two_sided_t(stat: float, df: float) -> float:
    if not np.isfinite(stat):
        return 0.0
    return float(2 * stdtr(df, -abs(stat)))


def _welch_df(var_a: float, df_a: float, var_b: float, df_b: float) -> float:
    num = (var_a + var_b) ** 2
    den = (var_a ** 2 / max(df_a, 1)) + (var_b ** 2 / max(df_b, 1))
    return float(num / den) if den > 0 else float(max(df_a + df_b, 1))


def _count_pmf(n: int, f: float, concentration: float) -> np.ndarray:
    """[n+1] probabilities of a count of n draws: beta-binomial with mean f and the given
    concentration (a + b), or binomial(n, f) when the concentration is infinite."""
    k = np.arange(n + 1)
    log_choose = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
    if np.isfinite(concentration):
        a, b = f * concentration, (1 - f) * concentration
        logp = log_choose + betaln(k + a, n - k + b) - betaln(a, b)
    else:
        logp = log_choose + k * np.log(f) + (n - k) * np.log1p(-f)
    pmf = np.exp(logp - logp.max())
    return pmf / pmf.sum()


def _ecdf_distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Kolmogorov-Smirnov statistic, Wasserstein-1 distance) of two samples, from one pair of empirical
    CDFs on the pooled sorted values: the largest gap between the CDFs, and the area between them."""
    grid = np.sort(np.concatenate([a, b]))
    gap = np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                 - np.searchsorted(np.sort(b), grid, side="right") / len(b))
    return float(gap.max()), float(np.sum(gap[:-1] * np.diff(grid)))


def _tail_part(batch_hit: np.ndarray, ref_hit: np.ndarray, units: np.ndarray,
               level: float) -> tuple[float, float, list[float], float]:
    """(reference fraction, batch fraction, CI of the batch fraction, p-value of equal fractions).

    The batch's count is compared with its predictive distribution: Binomial(n, f) with f, the
    population fraction beyond the reference's quantile, uncertain around the reference's fraction
    with the reference's design variance — a beta-binomial with those two moments. Exact tails
    matter here: normal approximations of a count of ~10% of 64 images put p < 1e-4 (where Holm's
    first steps look) 5-50x too often."""
    n = len(batch_hit)
    k = int(np.sum(batch_hit))
    f_r, f_b = float(ref_hit.mean()), k / n
    v_r = float(design_variance(ref_hit.astype(float), units)[0])
    fr = min(max(f_r, 0.5 / len(ref_hit)), 1 - 0.5 / len(ref_hit))
    concentration = fr * (1 - fr) / v_r - 1 if np.isfinite(v_r) and v_r > _EPS else np.inf
    pmf = _count_pmf(n, fr, max(concentration, 1e-3))
    p = float(min(1.0, 2 * min(pmf[:k + 1].sum(), pmf[k:].sum())))
    fb = min(max(f_b, 0.5 / n), 1 - 0.5 / n)
    half = ndtri(1 - (1 - level) / 2) * np.sqrt(fb * (1 - fb) / n + v_r)
    return f_r, f_b, [max(0.0, f_b - half), min(1.0, f_b + half)], p


def neuron_shift(batch: np.ndarray, reference: np.ndarray, units: np.ndarray, level: float = 0.95) -> NeuronShift:
    """The three-part comparison of one neuron's batch values with its reference values.

    `level`: coverage of the reported intervals."""
    b = np.asarray(batch, dtype=np.float64).reshape(-1)
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    n, m = len(b), len(r)
    if n < 2 or m < 2:
        raise ValueError(f"a two-sample comparison needs at least 2 images on each side (batch {n}, reference {m})")
    u = int(len(np.unique(units)))
    df_ref = max(u - 1, 1)
    mean_r, mean_b = float(r.mean()), float(b.mean())
    sd_r, sd_b = float(r.std(ddof=1)), float(b.std(ddof=1))
    scale = sd_r if sd_r > _EPS else max(1e-6, 1e-6 * abs(mean_r))
    v_ref = float(design_variance(r, units)[0])
    d = mean_b - mean_r
    v_null = sd_r ** 2 / n + v_ref
    var_pooled = ((n - 1) * sd_b ** 2 + (m - 1) * sd_r ** 2) / (n + m - 2)
    inflate = var_pooled / sd_r ** 2 if sd_r > _EPS else 1.0
    v_test = v_null * inflate
    if v_test <= _EPS:
        p_shift = 1.0 if abs(d) <= 1e-9 * max(1.0, abs(mean_r)) else 0.0
        df = float(n - 1)
    else:
        df = _welch_df(var_pooled / n, n + m - 2, v_ref * inflate, df_ref)
        p_shift = _two_sided_t(d / np.sqrt(v_test), df)
    v_ci = sd_b ** 2 / n + v_ref
    df_ci = _welch_df(sd_b ** 2 / n, n - 1, v_ref, df_ref) if v_ci > _EPS else float(n - 1)
    half = float(stdtrit(df_ci, 1 - (1 - level) / 2) * np.sqrt(max(v_ci, 0.0)))
    q10, q90 = (float(x) for x in np.quantile(r, [TAIL_LOW, TAIL_HIGH]))
    a_r, a_b, a_ci, p_a = _tail_part(b > q90, r > q90, units, level)
    l_r, l_b, l_ci, p_l = _tail_part(b < q10, r < q10, units, level)
    ks, w1 = _ecdf_distances(b, r)
    return NeuronShift(
        n_batch=n, n_reference=m, reference_units=u, mean_reference=mean_r, sd_reference=sd_r, mean_batch=mean_b,
        sd_batch=sd_b, shift=d / scale, shift_ci=[(d - half) / scale, (d + half) / scale], p_shift=p_shift, df=df,
        q10_reference=q10, q90_reference=q90, above_reference=a_r, above=a_b, above_ci=a_ci, p_above=p_a,
        below_reference=l_r, below=l_b, below_ci=l_ci, p_below=p_l, p_value=min(1.0, 3 * min(p_shift, p_a, p_l)),
        wasserstein_norm=w1 / scale, ks=ks,
        se_shift_null=float(np.sqrt(v_null)) / scale if np.isfinite(v_null) else float("inf"))


def detectable_shift(sd_reference: float, design_var_reference: float, n: int, alpha: float, power: float = 0.8) -> float:
    """Smallest mean shift (in reference SDs) a batch of `n` images detects with `power` at two-sided
    level `alpha`: (z_(1-alpha/2) + z_power) * sqrt(sd²/n + V_r) / sd."""
    if sd_reference <= _EPS:
        return float("inf")
    z = ndtri(1 - alpha / 2) + ndtri(power)
    return float(z * np.sqrt(sd_reference ** 2 / n + design_var_reference) / sd_reference)


def images_needed(sd_reference: float, design_var_reference: float, shift: float, alpha: float,
                  power: float = 0.8) -> float:
    """Batch size at which a mean shift of `shift` reference SDs is detected with `power` at level
    `alpha`; inf when the reference window itself is too uncertain for that shift at any size."""
    if sd_reference <= _EPS:
        return float("inf")
    z = ndtri(1 - alpha / 2) + ndtri(power)
    room = (shift * sd_reference / z) ** 2 - design_var_reference
    return float(np.ceil(sd_reference ** 2 / room)) if room > 0 else float("inf")
