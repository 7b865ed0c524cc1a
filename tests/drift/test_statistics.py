"""Each drift statistic pinned against a value computed by hand (or a direct scipy computation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from audit import drift
from audit.drift import resampling as rs
from audit.drift import statistics as st
from audit.drift.identity import match_moved_channel
from audit.drift.null import LayerNull, tail_quantile


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    a = rng.normal(size=120)
    b = 0.7 * a + 0.5 * rng.normal(size=120) + 0.3
    return a, b


def test_spearman_matches_scipy(pair):
    a, b = pair
    assert drift.spearman(a, b) == pytest.approx(sps.spearmanr(a, b).statistic, abs=1e-12)
    ties_a, ties_b = np.round(a), np.round(b * 2)
    assert drift.spearman(ties_a, ties_b) == pytest.approx(sps.spearmanr(ties_a, ties_b).statistic, abs=1e-12)
    assert np.isnan(drift.spearman(np.ones(5), np.arange(5.0)))
    assert st.rank_distance(a[:, None], b[:, None])[0] == pytest.approx(1 - sps.spearmanr(a, b).statistic)


def test_wasserstein_and_ks_match_scipy(pair):
    a, b = pair
    assert drift.wasserstein_norm(a, b) == pytest.approx(sps.wasserstein_distance(a, b) / a.std(ddof=1), rel=1e-12)
    ks_stat, ks_p = drift.ks(a, b)
    ref = sps.ks_2samp(a, b)
    assert (ks_stat, ks_p) == pytest.approx((ref.statistic, ref.pvalue))


def test_topk_overlap(pair):
    a, b = pair
    inter, jac = drift.topk_overlap(a, b, 15)
    sa, sb = set(np.argsort(-a)[:15]), set(np.argsort(-b)[:15])
    assert inter == len(sa & sb) and jac == pytest.approx(len(sa & sb) / len(sa | sb))
    assert drift.topk_overlap(a, a, 15) == (15, 1.0)


def test_effective_k_by_probe_size():
    assert [st.effective_k(20, n) for n in (8, 19, 20, 96, 192, 510)] == [2, 4, 2, 9, 19, 20]


def test_retention_hand_computed():
    # N = 6, k = 2. A's top two (images 0, 1) have ranks 1 and 2 of 6 under B: mean percentile 1.5/6 = 0.25;
    # best = (2N - k + 1) / 2N = 11/12, so retention = (0.25 - 0.5) / (11/12 - 0.5) = -0.6; the same the other way.
    a = np.array([5, 4, 3, 2, 1, 0.0])[:, None]
    b = a[::-1].copy()
    r_ab, r_ba = st.retention(a, b, 2)
    assert r_ab[0] == pytest.approx(-0.6) and r_ba[0] == pytest.approx(-0.6)
    assert st.retention_distance(a, b, 2)[0] == pytest.approx(1.6)
    assert st.retention_distance(a, a, 2)[0] == pytest.approx(0.0)


def test_content_distance_hand_computed():
    # Four images on the axes: normalized already (centered, mean squared norm 1). k = 1: A's top is image 0,
    # B's is image 1: centroids (1, 0) and (-1, 0), distance 2; two random 1-subsets are sqrt(2 (4-1) / (1 * 3))
    # = sqrt(2) apart on average (in the mean-square sense): 2 / sqrt(2).
    f = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    np.testing.assert_allclose(st.normalize_features(f), f)
    assert st.content_distance(np.array([[0]]), np.array([[1]]), f)[0] == pytest.approx(math.sqrt(2))
    assert st.content_distance(np.array([[0]]), np.array([[0]]), f)[0] == 0.0


def test_spatial_distance_hand_computed():
    # Two images, one channel, 4 cells: image 0's map is reversed (correlation -1), image 1's unchanged (+1).
    ga = np.array([[[1, 2, 3, 4.0]], [[1, 0, 0, 0.0]]])
    gb = np.array([[[4, 3, 2, 1.0]], [[1, 0, 0, 0.0]]])
    assert st.spatial_distance(ga, gb, np.array([[0]]), np.array([[1]]))[0] == pytest.approx(1.0)
    assert st.spatial_distance(ga, gb, np.array([[0]]), np.array([[0]]))[0] == pytest.approx(2.0)
    assert st.spatial_distance(ga, ga, np.array([[0]]), np.array([[1]]))[0] == pytest.approx(0.0)


def test_margin_distance_hand_computed():
    # Class 0 is top-1 on image 0 in A only: its margin there goes 3-1 = 2 -> 1-3 = -2 (|change| 4), divided by
    # the std of its logit over the images (3, 0): 4 / 2.1213. Class 1 is top-1 on image 0 in B and on image 1 in
    # both: |(-2) -> 2| = 4 and 0, mean 2, over std(1, 2) = 0.7071. Class 2 is top-1 nowhere: nan.
    la = np.array([[3.0, 1, 0], [0, 2, 1]])
    lb = np.array([[1.0, 3, 0], [0, 2, 1]])
    margins, top = st.top1_margins(la)
    np.testing.assert_allclose(margins, [[2, -2, -3], [-2, 1, -1]])
    assert top.tolist() == [0, 1]
    d = st.margin_distance(la, lb)
    assert d[0] == pytest.approx(4 / np.std([3, 0], ddof=1))
    assert d[1] == pytest.approx(2 / np.std([1, 2], ddof=1))
    assert np.isnan(d[2])


def test_partner_distance_hand_computed():
    # Four orthogonal +-1 columns (Walsh), so every correlation is 0 or 1 and std(a) = std(p) = 1.07.
    # b = a + 0.5 p + 0.3 q: the change 0.5 p + 0.3 q follows p with r = 0.5 / sqrt(0.34) (r^2 = 0.74 >= 0.5),
    # and the part that follows p has std 0.5 x std(p): size 0.5 of the neuron's std, partner p (column 1).
    # b = a + 0.4 (p + q + r): the best partner explains 1/3 of the change: no partner. b = 1.5 a: the change
    # follows the neuron itself, and the collinear column 2a is never a partner: no partner.
    a = np.array([1, -1, 1, -1, 1, -1, 1, -1.])
    p = np.array([1, 1, -1, -1, 1, 1, -1, -1.])
    q = np.array([1, 1, 1, 1, -1, -1, -1, -1.])
    r = np.array([1, -1, -1, 1, 1, -1, -1, 1.])
    layer = np.stack([a, p, q, r, 2 * a], 1)
    b = np.stack([a + 0.5 * p + 0.3 * q, a + 0.4 * (p + q + r), 1.5 * a], 1)
    size, partner = st.partner_distance(layer, b, np.array([0, 0, 0]))
    np.testing.assert_allclose(size, [0.5, 0, 0], atol=1e-12)
    assert partner.tolist() == [1, -1, -1]


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert drift.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04
    assert drift.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_wilson_interval_hand_computed():
    # 0 of 10: the upper bound is (z^2/n) / (1 + z^2/n) = 0.38415 / 1.38415.
    lo, hi = drift.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.384146 / 1.384146, rel=1e-5)
    lo, hi = drift.wilson_interval(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - 0.5 == pytest.approx(0.2634, abs=1e-3)


def test_tail_quantile_exponential():
    # Quantiles of Exp(1) laid out evenly: the 99.9 % quantile is ln(1000) = 6.908; the exponential tail fitted
    # above the 90th percentile recovers it from 1000 points, which hold only one point that far out.
    n = 1000
    v = -np.log(1 - (np.arange(n) + 0.5) / n)
    assert tail_quantile(v, 0.999) == pytest.approx(math.log(1000), rel=0.03)
    assert tail_quantile(v, 0.5) == pytest.approx(np.quantile(v, 0.5))
    assert tail_quantile(np.array([np.nan]), 0.99) == float("inf")


def test_layer_null_scales_hand_computed():
    # Two variants, two channels. Mean squares per channel: (1 + 9)/2 = 5 and 0; the layer's typical square is
    # their median, 2.5; two pseudo-draws of it: scale_0 = sqrt((10 + 5) / 4), scale_1 = sqrt(5 / 4).
    ln = LayerNull({"rank": np.array([[1.0, 0.0], [3.0, 0.0]])}, ["noise", "bn"], ["a", "b"])
    np.testing.assert_allclose(ln.scales("rank"), [math.sqrt(15 / 4), math.sqrt(5 / 4)])
    # leave-one-out: variant 0 of channel 0 over sqrt((9 + 5) / (1 + 2))
    z = ln.leave_one_out_z("rank")
    assert z[0, 0] == pytest.approx(1 / math.sqrt(14 / 3))
    assert z[0, 1] == 0.0


def test_cluster_bootstrap_keeps_photographs_together():
    groups = [f"img{g}" for g in range(6) for _ in range(3)]
    labels = rs.photograph_labels(groups, 18)
    idx = rs.cluster_bootstrap_indices(labels, 20, seed=0)
    assert idx.shape == (20, 18)
    for row in idx:
        for start in range(0, 18, 3):
            chunk = row[start:start + 3]
            assert len({groups[i] for i in chunk}) == 1 and len(set(chunk)) == 3
    assert np.array_equal(idx, rs.cluster_bootstrap_indices(labels, 20, seed=0))


def test_bootstrap_statistics_match_direct_computation(pair):
    a, b = pair
    idx = rs.cluster_bootstrap_indices(np.arange(len(a)), 5, seed=1)
    boot = rs.bootstrap_statistics(a, b, idx, 10)
    for r in range(5):
        aa, bb = a[idx[r]], b[idx[r]]
        assert boot["spearman"][r] == pytest.approx(sps.spearmanr(aa, bb).statistic, abs=1e-10)
        assert boot["wasserstein_norm"][r] == pytest.approx(sps.wasserstein_distance(aa, bb) / aa.std(ddof=1))


def test_topk_overlap_p_value_resamples_photographs():
    # Four photographs of two crops; both versions rank photograph 0's two crops on top (k = 2). Shuffling
    # photographs, the overlap is 2 only when photograph 0 lands on itself: p = 1/4. Treating the 8 crops as
    # exchangeable (the hypergeometric) would claim 1 / C(8, 2) = 1/28.
    a = np.array([8, 7, 6, 5, 4, 3, 2, 1.0])
    labels = np.repeat(np.arange(4), 2)
    p = rs.topk_overlap_p_value(a, a, 2, labels, n_perm=20000, seed=0)
    assert p == pytest.approx(0.25, abs=0.01)
    assert sps.hypergeom(8, 2, 2).sf(1) == pytest.approx(1 / 28)


def test_content_p_value():
    rng = np.random.default_rng(0)
    f = st.normalize_features(np.concatenate([rng.normal(size=(10, 3)) + [4, 0, 0], rng.normal(size=(10, 3))]))
    assert rs.content_p_value(f, np.arange(5), np.arange(5)) == 1.0
    assert rs.content_p_value(f, np.arange(5), np.arange(10, 15), n_perm=999) < 0.01
    assert rs.content_p_value(f, np.arange(5), np.arange(5, 10), n_perm=999) > 0.05


def test_power_statement_hand_computed():
    # A photograph bootstrap misses all of m changed photographs with probability ~exp(-m): m >= ln(20) -> 3.
    assert rs.changed_photographs_needed(0.05) == 3

    def reach(g, f):             # P(Binomial(g, f) >= 3)
        return 1 - sum(math.comb(g, i) * f ** i * (1 - f) ** (g - i) for i in range(3))

    need = rs.photographs_needed(0.1, 0.05, 0.8)
    assert reach(need, 0.1) >= 0.8 > reach(need - 1, 0.1)
    enough, text = rs.power_statement(12, 0.1)
    assert not enough and "12 photographs" in text and f"at least {need} photographs" in text
    assert f"{reach(12, 0.1):.2f}" in text
    assert rs.power_statement(need, 0.1)[0]


def test_photograph_folds_hold_out_whole_photographs():
    labels = np.repeat(np.arange(6), 3)
    folds = rs.photograph_folds(labels, 2)
    assert len(folds) == 2 and not (folds[0] & folds[1]).any() and (folds[0] | folds[1]).all()
    for held in folds:
        assert all(len(set(held[labels == g])) == 1 for g in range(6))


def test_match_moved_channel_is_cross_fitted():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 4)
    layer_a = rng.normal(size=(48, 30))
    perm = rng.permutation(30)
    layer_b = layer_a[:, perm]                     # channel i now at index argwhere(perm == i)
    m = match_moved_channel(layer_a[:, 5], layer_b, labels)
    assert m.agreed and m.index == int(np.flatnonzero(perm == 5)[0]) and m.heldout_spearman == pytest.approx(1.0)
    # a channel with no counterpart: the best in-sample match is chance, and the held-out folds show it
    noise = rng.normal(size=(48, 300))
    m = match_moved_channel(layer_a[:, 5], noise, labels)
    in_sample = np.max(st.correlation_matrix(layer_a[:, [5]], noise)[0])
    assert m.heldout_spearman < in_sample - 0.2
