"""Each drift statistic against a direct scipy computation; Holm and BH against hand-computed examples."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from audit import drift
from audit.config import ThresholdsConfig
from audit.records import NeuronTarget


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


def test_wasserstein_and_ks_match_scipy(pair):
    a, b = pair
    assert drift.wasserstein_norm(a, b) == pytest.approx(sps.wasserstein_distance(a, b) / a.std(ddof=1), rel=1e-12)
    ks_stat, ks_p = drift.ks(a, b)
    ref = sps.ks_2samp(a, b)
    assert (ks_stat, ks_p) == pytest.approx((ref.statistic, ref.pvalue))


def test_topk_overlap_and_hypergeometric_p(pair):
    a, b = pair
    k = 15
    inter, jac, p = drift.topk_overlap(a, b, k)
    sa, sb = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
    assert inter == len(sa & sb)
    assert jac == pytest.approx(len(sa & sb) / len(sa | sb))
    # P(X >= inter) for X ~ Hypergeom(population 120, 15 marked, 15 drawn)
    direct = sum(sps.hypergeom.pmf(x, 120, k, k) for x in range(inter, k + 1))
    assert p == pytest.approx(direct, rel=1e-9)
    assert drift.topk_overlap(a, a, k)[:2] == (k, 1.0)


def test_bootstrap_statistics_match_direct_computation(pair):
    a, b = pair
    idx = drift.bootstrap_indices(len(a), 5, seed=1)
    boot = drift.bootstrap_statistics(a, b, idx, 10)
    for r in range(5):
        aa, bb = a[idx[r]], b[idx[r]]
        assert boot["spearman"][r] == pytest.approx(sps.spearmanr(aa, bb).statistic, abs=1e-10)
        assert boot["wasserstein_norm"][r] == pytest.approx(sps.wasserstein_distance(aa, bb) / aa.std(ddof=1))
    # fixed seed -> same resamples
    assert np.array_equal(idx, drift.bootstrap_indices(len(a), 5, seed=1))


def test_cluster_bootstrap_keeps_photographs_together():
    groups = [f"img{g}" for g in range(6) for _ in range(3)]
    idx = drift.bootstrap_indices(18, 20, seed=0, groups=groups)
    assert idx.shape == (20, 18)
    for row in idx:
        for start in range(0, 18, 3):
            chunk = row[start:start + 3]
            assert len({groups[i] for i in chunk}) == 1 and len(set(chunk)) == 3


def test_cross_activation_and_visual_distance():
    probe_a, probe_b = np.arange(100.0), np.arange(100.0) * 2
    # A's image: 95 under A, 50 under B (B's probe values 0,2,..,198: 25 below, one tie -> 0.255);
    # B's image: 190 under B, 80 under A (A's probe values 0..99: 80 below, one tie -> 0.805)
    out = drift.cross_activation((95.0, 50.0, 190.0, 80.0), probe_a, probe_b)
    assert out["cross_a_in_b"] == pytest.approx(0.255)
    assert out["cross_b_in_a"] == pytest.approx(0.805)
    assert out["cross_b_in_a"] == pytest.approx(sps.percentileofscore(probe_a, 80.0, kind="mean") / 100)
    assert out["cross_activation"] == pytest.approx(0.255)
    fa = np.array([[0.0, 0.0], [2.0, 0.0]])
    fb = np.array([[0.0, 6.0], [2.0, 6.0]])
    cross = np.mean([6.0, np.hypot(2, 6), np.hypot(2, 6), 6.0])
    assert drift.visual_distance(fa, fb) == pytest.approx(cross / 2.0)
    assert drift.visual_distance(fa[:1], fb[:1]) is None
    # same seeds in the same order: image against image; unchanged images give 0, not (n-1)/n
    assert drift.visual_distance(fa, fb, paired=True) == pytest.approx(6.0 / 2.0)
    assert drift.visual_distance(fa, fa, paired=True) == 0.0
    assert drift.visual_distance(fa, fa) == pytest.approx(0.5)
    assert drift.visual_distance(fa, fb[:1], paired=True) == pytest.approx(np.mean([6.0, np.hypot(2, 6)]) / 2.0)


def test_holm_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert drift.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert drift.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04
    assert drift.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert drift.benjamini_hochberg(p) == pytest.approx(sps.false_discovery_control(p))
    assert drift.benjamini_hochberg([0.02, 0.9]) == pytest.approx([0.04, 0.9])


def test_match_channels_recovers_permutation():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(80, 12))
    perm = rng.permutation(12)
    assignment, corr = drift.match_channels(acts, acts[:, perm])
    assert [int(np.flatnonzero(perm == i)[0]) for i in range(12)] == assignment.tolist()
    assert corr[np.arange(12), assignment] == pytest.approx(1.0)


def _comparison(a, b, nid="n"):
    t = ThresholdsConfig(bootstrap=200)
    idx = drift.bootstrap_indices(len(a), t.bootstrap, 0)
    return drift.compare_neuron(NeuronTarget(nid, "inner", "x", 0), a, b, t, idx)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_verdicts_from_effect_sizes_with_multiplicity(seed):
    """Each case sits well inside one verdict's band (default thresholds: Spearman FAIL < 0.80,
    WARN < 0.95; W/sigma WARN > 0.35, FAIL > 1.0), so its verdict is exact on every seed."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=300)
    cases = [_comparison(a, a + 0.01 * rng.normal(size=300), "same"),
             _comparison(a, rng.normal(size=300), "changed"),
             # rank correlation ~0.86: beyond WARN, short of FAIL
             _comparison(a, 0.85 * a + 0.5 * rng.normal(size=300), "borderline"),
             # the same ranking, magnitude shifted by 0.6 sigma (WARN) and by 2 sigma (FAIL)
             _comparison(a, a + 0.6 * a.std(ddof=1), "shift-warn"),
             _comparison(a, a + 2.0 * a.std(ddof=1), "shift-fail")]
    res = {r.neuron_id: r for r in drift.assign_verdicts(cases, ThresholdsConfig())}
    assert {k: r.verdict for k, r in res.items()} == {
        "same": "PASS", "changed": "FAIL", "borderline": "WARN", "shift-warn": "WARN", "shift-fail": "FAIL"}
    assert "Spearman" in res["changed"].reason and "< 0.80" in res["changed"].reason
    assert 0.80 < res["borderline"].statistics["spearman"] < 0.95
    assert "Spearman" in res["borderline"].reason and "< 0.95" in res["borderline"].reason
    for nid, bound in (("shift-warn", "> 0.35"), ("shift-fail", "> 1.00")):
        assert "magnitude shifted" in res[nid].reason and bound in res[nid].reason, res[nid].reason
        assert res[nid].statistics["spearman"] == pytest.approx(1.0)
    lo, hi = res["changed"].ci["spearman"]
    assert lo <= res["changed"].statistics["spearman"] <= hi
