"""End to end on Lite0: itself, swapped class rows, a permuted layer; the report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from audit.config import ThresholdsConfig
from audit.drift import compare_versions
from audit.records import NeuronTarget
from audit.report import REQUIRED_STATISTICS, build_report, exit_code, verdict_table

TARGETS = [NeuronTarget("egyptian-cat", "class", "classifier", 285),
           NeuronTarget("espresso", "class", "classifier", 967),
           NeuronTarget("tabby", "class", "classifier", 281),
           NeuronTarget("b3-c5", "inner", "blocks.3", 5),
           NeuronTarget("b5-c17", "inner", "blocks.5", 17),
           NeuronTarget("b6-c40", "inner", "blocks.6", 40),
           NeuronTarget("b6-c200", "inner", "blocks.6", 200)]


def test_itself_all_pass(lite0, small_probe):
    results = compare_versions(lite0, lite0, small_probe, TARGETS, ThresholdsConfig())
    assert [r.verdict for r in results] == ["PASS"] * len(TARGETS)
    assert all(r.matched_index is None for r in results)
    report = build_report("lite0", "1", "1", small_probe.sha256, results)
    assert report["summary"] == {"PASS": len(TARGETS), "WARN": 0, "FAIL": 0}
    assert exit_code(report) == 0


def test_swapped_class_rows_fail(lite0, small_probe, helpers):
    swapped = helpers.swap_classes(lite0, 285, 967)
    results = {r.neuron_id: r for r in compare_versions(lite0, swapped, small_probe, TARGETS, ThresholdsConfig())}
    assert results["egyptian-cat"].verdict == "FAIL" and results["espresso"].verdict == "FAIL"
    assert all(r.verdict == "PASS" for k, r in results.items() if k not in ("egyptian-cat", "espresso"))
    reason = results["egyptian-cat"].reason
    assert "Spearman" in reason and "coffee" in reason and "logit 967" in reason
    assert results["egyptian-cat"].matched_index is None           # a logit's index is its label
    report = build_report("lite0", "1", "2", small_probe.sha256, list(results.values()))
    assert exit_code(report) == 1
    text = json.dumps(report, allow_nan=False)                      # strict JSON
    back = json.loads(text)
    assert set(back) >= {"model", "baseline", "candidate", "probe_set_sha256", "created_at", "neurons", "summary"}
    n0 = back["neurons"][0]
    assert set(n0) >= {"id", "layer", "index", "kind", "verdict", "statistics", "matched_index", "reason"}
    assert set(n0["statistics"]) >= set(REQUIRED_STATISTICS)
    assert back["summary"] == {"PASS": 5, "WARN": 0, "FAIL": 2}
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(verdict_table(report))
    assert "FAIL" in console.export_text()


def test_permuted_layer_reports_matched_index(lite0, small_probe, helpers):
    perm = np.random.default_rng(7).permutation(320)
    moved = helpers.permute_stage_output(lite0, 6, perm)
    results = {r.neuron_id: r for r in compare_versions(lite0, moved, small_probe, TARGETS, ThresholdsConfig())}
    for nid, old in (("b6-c40", 40), ("b6-c200", 200)):
        r = results[nid]
        assert r.matched_index == int(np.flatnonzero(perm == old)[0])
        assert r.verdict == "PASS"
        assert r.statistics["spearman"] == pytest.approx(1.0, abs=1e-3)
        assert f"moved to index {r.matched_index}" in r.reason
    # logits are unchanged by a consistent permutation
    assert all(results[n].verdict == "PASS" and results[n].matched_index is None
               for n in ("egyptian-cat", "espresso", "tabby", "b3-c5", "b5-c17"))


def test_visual_statistics_feed_the_verdict(lite0, small_probe):
    t = [TARGETS[0]]
    feats_a = {"egyptian-cat": np.array([[0.0, 0.0], [1.0, 0.0]])}
    feats_b = {"egyptian-cat": np.array([[0.0, 9.0], [1.0, 9.0]])}
    res = compare_versions(lite0, lite0, small_probe, t, ThresholdsConfig(),
                           visual_features_a=feats_a, visual_features_b=feats_b,
                           viz_acts={"egyptian-cat": (1e3, 1e3, 1e3, 1e3)})[0]
    assert res.statistics["visual_distance"] > 2.0
    assert res.statistics["cross_activation"] == pytest.approx(1.0)
    assert res.verdict == "WARN" and "visualizations differ" in res.reason
    same = compare_versions(lite0, lite0, small_probe, t, ThresholdsConfig(), visual_features_a=feats_a,
                            visual_features_b=feats_a, visual_paired={"egyptian-cat"})[0]
    assert same.statistics["visual_distance"] == 0.0 and same.verdict == "PASS"


def test_visual_features_shape(lite0):
    from audit.drift import visual_features

    imgs = [np.full((40, 50, 3), v, np.uint8) for v in (10, 200)]
    f = visual_features(imgs, lite0)
    assert f.shape == (2, 1280) and np.isfinite(f).all()
