"""Each evidence path on a small planted case that FAILs with it and PASSes without it.

The activations are synthetic (12 photographs x 20 crops), but the null, the evidence and the
verdicts go through the product's own code: the benign variants are the baseline plus small
noise, measured with `layer_null_distances` into a `LayerNull` exactly as the real null is."""
from __future__ import annotations

import re

import numpy as np
import pytest

from audit.config import ThresholdsConfig
from audit.drift import compare_activations
from audit.drift.null import BenignNull
from audit.drift.statistics import normalize_features
from audit.records import NeuronTarget
from audit.stats import LayerActivations
from tests.drift.synthetic import CELLS, CHANNELS, CROPS, GROUPS, INNER, K, N, NAMES, PHOTOS, acts, null_of, verdict


@pytest.fixture(scope="module")
def inner_layer():
    """Channel values with a clear top (20 crops far above a normal bulk) and smooth random maps."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(N, CHANNELS))
    top = rng.choice(N, size=K, replace=False)
    values[top, 0] += 10
    grid = np.abs(rng.normal(size=(N, CHANNELS, CELLS))).cumsum(-1)      # maps that rise along the cells
    return values, grid


def test_rank_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    rng = np.random.default_rng(2)
    bottom = np.argsort(values[:, 0])[:N // 2]
    b[bottom, 0] = b[rng.permutation(bottom), 0]             # the lower half reshuffled: top, maps, distribution kept
    cand = acts(b, grid)
    res = verdict(base, cand, null_of(base, 0.05), INNER)
    assert res.verdict == "FAIL" and res.evidence["evidence"][0]["kind"] == "rank"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"rank"}
    assert verdict(base, cand, null_of(base, 0.05, drop=("rank",)), INNER).verdict == "PASS"


def test_retention_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    order = np.argsort(-values[:, 0])
    top, low = order[:5], np.random.default_rng(3).choice(order[N // 2:], 5, replace=False)
    b[top, 0], b[low, 0] = values[low, 0], values[top, 0]    # five best images swapped with ordinary ones
    cand = acts(b, grid)
    null = null_of(base, 0.5)                                 # the bulk reshuffles under benign noise, the top does not
    res = verdict(base, cand, null, INNER)
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"retention"}
    assert "stopped firing on its own top images" in res.reason
    assert verdict(base, cand, null_of(base, 0.5, drop=("retention",)), INNER).verdict == "PASS"


def test_content_path():
    # Photographs 0-2 share the top region (values ~10, reshuffled by benign noise); the candidate lifts
    # photograph 1 above the others: its top images are one photograph's content, not a mix.
    rng = np.random.default_rng(4)
    values = rng.normal(size=(N, CHANNELS))
    labels = np.repeat(np.arange(PHOTOS), CROPS)
    region = labels < 3
    values[region, 0] = 10 + rng.uniform(-1, 1, size=region.sum())
    feats = normalize_features(rng.normal(size=(PHOTOS, 8))[labels] + 0.3 * rng.normal(size=(N, 8)))
    base = acts(values)
    b = values.copy()
    b[labels == 1, 0] += 1.5
    cand = acts(b)
    null = null_of(base, 0.12, features=feats)
    res = verdict(base, cand, null, INNER, features=feats)
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"content"}
    assert res.evidence["topk"]["photos_b"][0][0] == "photo1"
    assert "top-activating probes changed from crops of" in res.reason and "to crops of photo1 (" in res.reason
    assert verdict(base, cand, null_of(base, 0.12, features=feats, drop=("content",)), INNER,
                   features=feats).verdict == "PASS"


def test_spatial_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    flipped = grid.copy()
    flipped[:, 0, :] = grid[:, 0, ::-1]                      # the channel fires at the other end of the image
    cand = acts(values, flipped)
    res = verdict(base, cand, null_of(base, 0.05), INNER)
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"spatial"}
    assert "fires in other places" in res.reason
    assert verdict(base, cand, null_of(base, 0.05, drop=("spatial",)), INNER).verdict == "PASS"


def test_magnitude_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    b, g = values.copy(), grid.copy()
    b[:, 0] *= 1.5
    g[:, 0] *= 1.5
    cand = acts(b, g)
    res = verdict(base, cand, null_of(base, 0.05), INNER)
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"magnitude"}
    assert "activation magnitude shifted" in res.reason
    assert verdict(base, cand, null_of(base, 0.05, drop=("magnitude",)), INNER).verdict == "PASS"


def test_partner_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    b[:, 0] = values[:, 0] + 0.5 * values[:, 5]              # channel 0 now also carries half of channel 5
    cand = acts(b, grid)
    res = verdict(base, cand, null_of(base, 0.5), INNER)
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"partner"}
    assert res.evidence["partner"] == 5 and "now also responds like channel 5" in res.reason
    assert verdict(base, cand, null_of(base, 0.5, drop=("partner",)), INNER).verdict == "PASS"


def test_margin_path_and_attribution():
    # 20 classes; class 0 is the top-1 class on photograph 0. The candidate raises class 5 on photograph 0:
    # class 0's own logit is unchanged, but it lost the top-1 there.
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(PHOTOS), CROPS)
    logits = rng.normal(size=(N, 20))
    logits[np.arange(N), labels % 20] += 6                    # photograph g: class g is top-1
    base = LayerActivations(logits.astype(np.float32), logits.astype(np.float32), logits.argmax(1))
    b = logits.copy()
    b[labels == 0, 5] += 8
    cand = LayerActivations(b.astype(np.float32), b.astype(np.float32), b.argmax(1))
    t0 = NeuronTarget("class-0", "class", "head", 0)
    t5 = NeuronTarget("class-5", "class", "head", 5)
    null = null_of(base, 0.05, head=True)
    res = verdict(base, cand, null, t0, head="head")
    assert res.verdict == "FAIL"
    assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"margin"}
    assert re.search(r"no longer the top-1 class on \d+ probe images \(photo0\), now logit 5", res.reason)
    assert verdict(base, cand, null_of(base, 0.05, head=True, drop=("margin",)), t0, head="head").verdict == "PASS"
    # with class 5 registered too, the change is class 5's: it FAILs, class 0 PASSes with the note
    both = compare_activations({"head": base}, {"head": cand}, [t0, t5], BenignNull({"head": null}), NAMES, GROUPS,
                               ThresholdsConfig(bootstrap=100), head="head")
    v = {r.neuron_id: r for r in both}
    assert v["class-5"].verdict == "FAIL" and v["class-0"].verdict == "PASS"
    assert "that change is the other neuron's" in v["class-0"].reason
    assert v["class-0"].evidence["attributed_to"] == [5]


def test_visual_path(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    null = null_of(base, 0.05)
    top = float(values[:, 0].max())
    # each version's visualization is its top image, but under the other version it falls to the bottom
    strong = {"c0": (top, -10.0, top, -10.0)}
    res = verdict(base, base, null, INNER, viz_acts=strong)
    assert res.verdict == "FAIL" and "excites it" in res.reason
    assert res.evidence["visual"]["level"] == "fail"
    assert verdict(base, base, null, INNER).verdict == "PASS"
    moderate = {"c0": (top, float(np.median(values[:, 0])) - 0.1, top, top)}
    assert verdict(base, base, null, INNER, viz_acts=moderate).verdict == "WARN"


def test_identity_moved_versus_reinitialised(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    null = null_of(base, 0.05)
    perm = np.random.default_rng(6).permutation(CHANNELS)
    moved = acts(values[:, perm], grid[:, perm])
    res = verdict(base, moved, null, INNER)
    assert res.verdict == "PASS" and res.matched_index == int(np.flatnonzero(perm == 0)[0])
    assert "moved to index" in res.reason and res.evidence["identity"]["agreed"]
    b = values.copy()
    b[:, 0] = np.random.default_rng(7).normal(size=N)
    res = verdict(base, acts(b, grid), null, INNER)
    assert res.verdict == "FAIL" and res.matched_index is None


def test_dead_channel(inner_layer):
    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    b[:, 0] = 0.0
    res = verdict(base, acts(b, grid), null_of(base, 0.05), INNER)
    assert res.verdict == "FAIL" and "no longer responds" in res.reason
    dead = values.copy()
    dead[:, 0] = 1.0
    assert verdict(acts(dead, grid), acts(dead, grid), null_of(acts(dead, grid), 0.05), INNER).verdict == "PASS"


def test_moved_channel_next_to_a_dead_one(inner_layer):
    """A permutation that moves a dead (constant) channel: the dead channel is found at its new index, and a
    live channel whose old index now holds the dead one is found too; both PASS."""
    values, grid = inner_layer
    v = values.copy()
    v[:, 3] = 0.5                                         # channel 3 is dead in both versions
    base = acts(v, grid)
    null = null_of(base, 0.05)
    perm = np.arange(CHANNELS)
    perm[[0, 3]] = [3, 0]                                 # channels 0 and 3 trade places
    moved = acts(v[:, perm], grid[:, perm])
    dead = verdict(base, moved, null, NeuronTarget("c3", "inner", "blocks.1", 3))
    assert dead.verdict == "PASS" and dead.matched_index == 0 and "dead channel" in dead.reason
    live = verdict(base, moved, null, INNER)
    assert live.verdict == "PASS" and live.matched_index == 3


def test_revived_dead_channel_is_not_moved(inner_layer):
    """Two channels dead at 0; the candidate revives one. The other is still the only channel dead at that
    value in the candidate, but it never left its index: the revived channel FAILs, it did not "move"."""
    values, grid = inner_layer
    v = values.copy()
    v[:, [3, 4]] = 0.0
    base = acts(v, grid)
    b = v.copy()
    b[:, 3] = np.random.default_rng(8).normal(size=N)
    res = verdict(base, acts(b, grid), null_of(base, 0.05), NeuronTarget("c3", "inner", "blocks.1", 3))
    assert res.verdict == "FAIL" and res.matched_index is None
    assert "now responds to inputs" in res.reason and "moved" not in res.reason


def test_reinitialised_channel_beside_a_near_duplicate_fails(inner_layer):
    """Channel 1 is a near-duplicate of channel 0. Re-initialising channel 0 leaves channel 1 as its best
    cross-fitted match, within the null; but channel 1 never left its index, so this is no move: FAIL.
    A real swap of channel 0 with channel 5 in the same layer is still found, one-to-one."""
    values, grid = inner_layer
    v, g = values.copy(), grid.copy()
    rng = np.random.default_rng(9)
    v[:, 1] = v[:, 0] + 0.02 * v[:, 0].std() * rng.normal(size=N)
    g[:, 1] = g[:, 0]
    base = acts(v, g)
    null = null_of(base, 0.05)
    b = v.copy()
    b[:, 0] = rng.normal(size=N)
    res = verdict(base, acts(b, g), null, INNER)
    assert res.verdict == "FAIL" and res.matched_index is None
    ident = res.evidence["identity"]
    assert ident["index"] == 1 and ident["destination_left"] is False and ident["within_null"] is True
    assert "near-duplicate" in res.reason and "changed, not moved" in res.reason
    perm = np.arange(CHANNELS)
    perm[[0, 5]] = [5, 0]
    swapped = verdict(base, acts(v[:, perm], g[:, perm]), null, INNER)
    assert swapped.verdict == "PASS" and swapped.matched_index == 5
    assert swapped.evidence["identity"]["back_agrees"] and swapped.evidence["identity"]["destination_left"]
    # the registered index's own evidence is kept next to the move
    registered = swapped.evidence["registered"]
    assert registered["index"] == 0 and any(e["level"] == "fail" for e in registered["evidence"])
    assert "at index 0 it is beyond the benign null" in swapped.reason


def test_missing_evidence_is_named_and_keeps_its_share(inner_layer):
    """The candidate's channel now fires uniformly over each image (its values unchanged): the spatial
    distance is undefined. It is named in the reason and in the report, and the other kinds keep the bounds
    they have when spatial is measured (its share of the false-alarm rate is not handed to them)."""
    from audit.report import build_report

    values, grid = inner_layer
    base = acts(values, grid)
    null = null_of(base, 0.05)
    flat = grid.copy()
    flat[:, 0, :] = grid[:, 0, :].mean(-1, keepdims=True)
    res = verdict(base, acts(values, flat), null, INNER)
    missing = res.evidence["missing"]
    assert [m["kind"] for m in missing] == ["spatial"] and "fires uniformly" in missing[0]["why"]
    assert "not measured: where it fires (spatial" in res.reason
    bounds = {e["kind"]: e["fail_bound"] for e in res.evidence["evidence"]}
    measured = {e["kind"]: e["fail_bound"] for e in verdict(base, base, null, INNER).evidence["evidence"]}
    assert "spatial" in measured and "spatial" not in bounds
    assert bounds == {k: v for k, v in measured.items() if k != "spatial"}
    report = build_report("m", "1", "2", "probe-sha", [res])
    assert report["neurons"][0]["evidence"]["missing"][0]["kind"] == "spatial"


def test_a_registered_kind_is_measured_judged_and_told(inner_layer):
    """One registered function is a new kind of evidence: the null tables it, the compare judges it against
    its bound with its share of the rate, the report carries its title and the reason its sentence. The
    planted change (only the lowest image falls by 2 sigma) is seen by it alone."""
    from audit.drift.evidence_kinds import distances_key, register_evidence, unregister_evidence

    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    b[np.argmin(values[:, 0]), 0] -= 2 * values[:, 0].std()
    cand = acts(b, grid)
    key = distances_key()

    @register_evidence("floor", title="lowest response",
                       sentence=lambda e, c, names: f"its lowest response moved by {e.value:.1f} sigma")
    def floor(cols):
        return np.abs(cols.b.min(0) - cols.a.min(0)) / cols.a.std(0, ddof=1)

    try:
        assert distances_key() != key                       # the null's cache key follows the registry
        null = null_of(base, 0.05)
        assert null.distances["floor"].shape == (10, CHANNELS)
        res = verdict(base, cand, null, INNER)
        assert res.verdict == "FAIL"
        assert {e["kind"] for e in res.evidence["evidence"] if e["level"] == "fail"} == {"floor"}
        assert next(e for e in res.evidence["evidence"] if e["kind"] == "floor")["title"] == "lowest response"
        assert "its lowest response moved by 2.0 sigma" in res.reason
    finally:
        unregister_evidence("floor")
    assert distances_key() == key
    assert verdict(base, cand, null_of(base, 0.05), INNER).verdict == "PASS"


def test_a_pass_beside_a_wide_null_does_not_claim_the_function_was_preserved(inner_layer):
    """Benign re-saves that scramble the channel (noise at 3x its std) make a reshuffled bulk a PASS;
    its Spearman is below spearman_fail, so the reason says the probe cannot tell, not "function preserved"."""
    values, grid = inner_layer
    base = acts(values, grid)
    b = values.copy()
    rng = np.random.default_rng(2)
    bulk = np.argsort(values[:, 0])[:N - K]                   # everything below the top reshuffled
    b[bulk, 0] = b[rng.permutation(bulk), 0]
    res = verdict(base, acts(b, grid), null_of(base, 3.0), INNER)
    assert res.verdict == "PASS" and res.statistics["spearman"] < ThresholdsConfig().spearman_fail
    assert "function preserved" not in res.reason
    assert res.reason.startswith("changed by its effect sizes (Spearman") and "cannot tell" in res.reason
    same = verdict(base, base, null_of(base, 3.0), INNER)
    assert same.verdict == "PASS" and same.reason.startswith("function preserved")
