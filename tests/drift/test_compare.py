"""End to end on Lite0 (96 px probe, 4 crops of each of 12 photographs): itself, swapped class rows,
a permuted stage, the demo's planted change, a competitor that takes a class's top-1, and the same
verdicts with twice the crops of the same photographs. The benign null is built for real from the
baseline (cached in memory for the session)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from audit.config import ThresholdsConfig
from audit.drift import compare_versions
from audit.records import NeuronTarget
from audit.report import REQUIRED_STATISTICS, build_report, exit_code
from flows.tables import verdict_table

TARGETS = [NeuronTarget("egyptian-cat", "class", "classifier", 285),
           NeuronTarget("espresso", "class", "classifier", 967),
           NeuronTarget("tabby", "class", "classifier", 281),
           NeuronTarget("b3-c5", "inner", "blocks.3", 5),
           NeuronTarget("b5-c17", "inner", "blocks.5", 17),
           NeuronTarget("b6-c40", "inner", "blocks.6", 40),
           NeuronTarget("b6-c200", "inner", "blocks.6", 200)]
T = ThresholdsConfig(bootstrap=200)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The demo's version 2: the espresso row fine-tuned to fire on the cat photograph."""
    from sources import load_model
    from flows.demo import build_planted_version

    path = tmp_path_factory.mktemp("planted") / "v2.safetensors"
    build_planted_version(path)
    return load_model("efficientnet_lite0", f"file:{path}")


def by_id(results):
    return {r.neuron_id: r for r in results}


def test_itself_all_pass(lite0, small_probe):
    results = compare_versions(lite0, lite0, small_probe, TARGETS, T)
    assert [r.verdict for r in results] == ["PASS"] * len(TARGETS)
    assert all(r.matched_index is None for r in results)
    report = build_report("lite0", "1", "1", small_probe.sha256, results)
    assert report["summary"] == {"PASS": len(TARGETS), "WARN": 0, "FAIL": 0} and exit_code(report) == 0
    assert report["probe"]["n_photographs"] == 12 and not report["probe"]["enough_photographs"]
    assert "12 photographs" in report["probe"]["power"]
    assert len(report["benign_null"]["variants"]) == 11


def test_swapped_class_rows_fail(lite0, small_probe, helpers):
    swapped = helpers.swap_classes(lite0, 285, 967)
    results = by_id(compare_versions(lite0, swapped, small_probe, TARGETS, T))
    assert results["egyptian-cat"].verdict == "FAIL" and results["espresso"].verdict == "FAIL"
    assert all(r.verdict == "PASS" for k, r in results.items() if k not in ("egyptian-cat", "espresso"))
    reason = results["egyptian-cat"].reason
    assert "top-activating probes changed from crops of chelsea" in reason and "to crops of coffee" in reason
    assert "logit 967" in reason and results["egyptian-cat"].matched_index is None
    report = build_report("lite0", "1", "2", small_probe.sha256, list(results.values()))
    assert exit_code(report) == 1
    back = json.loads(json.dumps(report, allow_nan=False))              # strict JSON
    assert set(back) >= {"model", "baseline", "candidate", "probe_set_sha256", "created_at", "neurons", "summary"}
    n0 = back["neurons"][0]
    assert set(n0) >= {"id", "layer", "index", "kind", "verdict", "statistics", "matched_index", "reason", "evidence"}
    assert set(n0["statistics"]) >= set(REQUIRED_STATISTICS)
    assert n0["evidence"]["evidence"][0]["level"] == "fail" and n0["evidence"]["topk"]["new_in_b"]
    assert back["summary"] == {"PASS": 5, "WARN": 0, "FAIL": 2}
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(verdict_table(report))
    text = console.export_text()
    assert "FAIL" in text and "12 photographs" in text


def test_permuted_layer_reports_matched_index(lite0, small_probe, helpers):
    perm = np.random.default_rng(7).permutation(320)
    moved = helpers.permute_stage_output(lite0, 6, perm)
    results = by_id(compare_versions(lite0, moved, small_probe, TARGETS, T))
    for nid, old in (("b6-c40", 40), ("b6-c200", 200)):
        r = results[nid]
        assert r.matched_index == int(np.flatnonzero(perm == old)[0]) and r.verdict == "PASS"
        assert r.statistics["spearman"] == pytest.approx(1.0, abs=1e-3)
        assert f"moved to index {r.matched_index}" in r.reason
    assert all(results[n].verdict == "PASS" and results[n].matched_index is None
               for n in ("egyptian-cat", "espresso", "tabby", "b3-c5", "b5-c17"))


def test_demo_planted_change_fails_and_its_victim_passes(lite0, small_probe, planted):
    results = by_id(compare_versions(lite0, planted, small_probe, TARGETS, T))
    esp = results["espresso"]
    assert esp.verdict == "FAIL"
    assert "to crops of chelsea" in esp.reason and "rests on 12 photographs" in esp.reason
    assert esp.evidence["support"]["carried_by"][0][0] == "chelsea"
    # The cat logit is untouched; it lost its top-1 on the cat crops to espresso, which FAILs: attributed there.
    cat = results["egyptian-cat"]
    assert cat.verdict == "PASS" and "that change is the other neuron's" in cat.reason
    assert all(results[n].verdict == "PASS" for n in ("tabby", "b3-c5", "b5-c17", "b6-c40", "b6-c200"))


def test_competitor_taking_the_top1_fails(lite0, small_probe):
    """Only the cup logit's bias moves (class 968), far enough to win on every coffee crop by a wide margin;
    espresso's own logit is unchanged but it is no longer the top-1 class there. With espresso registered and
    cup not, espresso FAILs and the reason names the cup logit. (A smaller push, +6, stays within the benign
    null on this 48-image probe: an int8 round trip alone flips one of espresso's three top-1 crops.)"""
    m = copy.deepcopy(lite0)
    with torch.no_grad():
        m.classifier.bias[968] += 20.0
    results = by_id(compare_versions(lite0, m, small_probe, TARGETS, T))
    esp = results["espresso"]
    assert esp.verdict == "FAIL" and esp.statistics["spearman"] == pytest.approx(1.0)
    assert "no longer the top-1 class" in esp.reason and "logit 968" in esp.reason
    assert esp.evidence["evidence"][0]["kind"] == "margin"


def test_doubling_crops_keeps_verdicts(lite0, small_probe, planted, helpers):
    """Twice the crops of the same 12 photographs: the same verdicts on the same changes."""
    from audit.probe import build_probe_set

    double = build_probe_set("builtin:samples", size=96, crops_per_image=8)
    perm = np.random.default_rng(7).permutation(320)
    for cand in (planted, helpers.swap_classes(lite0, 285, 967), helpers.permute_stage_output(lite0, 6, perm)):
        v4 = {r.neuron_id: (r.verdict, r.matched_index) for r in compare_versions(lite0, cand, small_probe, TARGETS, T)}
        v8 = {r.neuron_id: (r.verdict, r.matched_index) for r in compare_versions(lite0, cand, double, TARGETS, T)}
        assert v4 == v8


def test_negated_stem_filter_fails(lite0, small_probe):
    """Lite0's stem (bn1, ReLU6) pins many channels' spatial max at 6 on every probe image. Negating the
    filter of such a channel keeps its max pinned at 6 (by the max alone it is "dead" in both versions) while
    its spatial mean now anti-correlates with the baseline's: audited on its spatial mean, it FAILs. Its
    untouched pinned neighbour is audited the same way and PASSes."""
    from audit.stats import layer_activations_full

    m = copy.deepcopy(lite0)
    with torch.no_grad():
        m.conv_stem.weight[0] *= -1
    a = layer_activations_full(lite0, small_probe, ["bn1"], 32)["bn1"]
    b = layer_activations_full(m, small_probe, ["bn1"], 32, use_cache=False)["bn1"]
    for acts in (a, b):                             # the premise: the spatial max is pinned at 6 in both versions
        assert np.ptp(acts.max[:, [0, 15]], axis=0).tolist() == [0, 0] and acts.max[0, 0] == pytest.approx(6.0)
    assert np.corrcoef(a.mean[:, 0], b.mean[:, 0])[0, 1] < -0.8
    targets = [NeuronTarget("stem-c0", "inner", "bn1", 0), NeuronTarget("stem-c15", "inner", "bn1", 15)]
    results = by_id(compare_versions(lite0, m, small_probe, targets, T))
    assert results["stem-c0"].verdict == "FAIL" and results["stem-c0"].matched_index is None
    assert "audited on its spatial mean" in results["stem-c0"].reason
    assert "dead channel" not in results["stem-c0"].reason
    assert results["stem-c0"].evidence["statistic"] == "mean"
    assert results["stem-c15"].verdict == "PASS"
