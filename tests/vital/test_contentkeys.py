"""Content keys: a neuron is re-rendered exactly when something its render reads changed.

Each parameter group of Lite0 (stem, every stage, the last conv, bn2, the head) is changed in
turn; the expected outcome per neuron form is written out here, not derived from the code."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from audit.config import NeuronConfig
from audit.contentkeys import forward_trace, paper_taps, read_layers, vital_default_taps
from audit.pipeline import visualization_content_key
from audit.vital import VitalRequest, VitalSettings, render_vital

GROUPS = {                      # group -> one tensor of it, scaled in place
    "stem": "conv_stem.weight",
    "bn1": "bn1.running_var",
    **{f"blocks.{i}": f"blocks.{i}.0.conv_pw.weight" if i else "blocks.0.0.conv_dw.weight" for i in range(7)},
    "conv_head": "conv_head.weight",
    "bn2": "bn2.weight",
    "head": "classifier.weight",
}
ALL = set(GROUPS)

PAPER_CLASS = NeuronConfig(id="cat", kind="class", layer="classifier", index=285, references="builtin:samples/chelsea")
TOPK_CLASS = NeuronConfig(id="cat-topk", kind="class", layer="classifier", index=285, references="top-k")
INNER_B3 = NeuronConfig(id="b3", kind="inner", layer="blocks.3", index=7)

# What each neuron's render reads (fast preset: taps bn1, blocks 0,1,2,4,6, bn2).
EXPECTED_FAST = {
    "cat": ALL,                                         # taps end at bn2; the class term reads the head
    "cat-topk": ALL,                                    # relevance from the logit: the head too
    "b3": {"stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3"},   # nothing after the target
}
# Paper preset taps: conv_stem, blocks 1, 2, 4, 6 (the authors' stem conv + four stages); no class term.
EXPECTED_PAPER_CLASS = ALL - {"head", "conv_head", "bn2"}
# The fast preset without its class term (class_weight 0): the taps end at bn2, the head is not read.
EXPECTED_FAST_NO_CLASS_TERM = ALL - {"head"}


@pytest.fixture(scope="module")
def variants(lite0):
    out = {}
    state = lite0.state_dict()
    for group, key in GROUPS.items():
        m = copy.deepcopy(lite0)
        with torch.no_grad():
            m.state_dict()[key].mul_(0.5)
        assert not torch.equal(m.state_dict()[key], state[key])
        out[group] = m
    return out


def _changed(lite0, variants, neuron, settings) -> set[str]:
    refs = torch.zeros(2, 3, 8, 8)
    base = visualization_content_key(lite0, neuron, refs, settings, seed=0)
    return {g for g, m in variants.items() if visualization_content_key(m, neuron, refs, settings, seed=0) != base}


def test_taps_of_the_two_tap_sets(lite0):
    assert vital_default_taps(lite0) == ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "bn2"]
    assert paper_taps(lite0) == ["conv_stem", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    trace = forward_trace(lite0)
    taps = vital_default_taps(lite0)
    assert read_layers(trace, taps, [1] * 7, "blocks.3", True) == ["bn1", "blocks.0", "blocks.1", "blocks.2",
                                                                   "blocks.3"]
    assert read_layers(trace, taps, [1, 1, 0, 1, 1, 1, 1], "classifier", False) == [t for t in taps if t != "blocks.1"]


@pytest.mark.parametrize("neuron", [PAPER_CLASS, TOPK_CLASS, INNER_B3], ids=lambda n: n.id)
def test_fast_preset_rerenders_exactly_what_the_neuron_reads(lite0, variants, neuron):
    settings = VitalSettings.for_model(lite0, resolution=32, steps=2)
    assert _changed(lite0, variants, neuron, settings) == EXPECTED_FAST[neuron.id]


def test_without_the_class_term_a_class_neuron_ignores_the_head(lite0, variants):
    settings = VitalSettings.for_model(lite0, resolution=32, steps=2, class_weight=0.0)
    assert _changed(lite0, variants, PAPER_CLASS, settings) == EXPECTED_FAST_NO_CLASS_TERM


def test_paper_preset_class_neuron_ignores_the_head_conv(lite0, variants):
    settings = VitalSettings.for_model(lite0, preset="paper", resolution=32, steps=2)
    assert _changed(lite0, variants, PAPER_CLASS, settings) == EXPECTED_PAPER_CLASS


def test_key_moves_with_settings_references_and_seed(lite0):
    s = VitalSettings.for_model(lite0, resolution=32, steps=2)
    refs = torch.zeros(2, 3, 8, 8)
    base = visualization_content_key(lite0, PAPER_CLASS, refs, s, seed=0)
    assert visualization_content_key(lite0, PAPER_CLASS, refs, s, seed=1) != base
    assert visualization_content_key(lite0, PAPER_CLASS, refs + 1, s, seed=0) != base
    assert visualization_content_key(lite0, PAPER_CLASS, refs, s.model_copy(update={"steps": 3}), seed=0) != base
    weights = [1, 1, 1, 1, 1, 1, 2]
    assert visualization_content_key(lite0, PAPER_CLASS, refs, s.model_copy(update={"tap_weights": weights}), 0) != base
    # an unresolved and a resolved copy of the same settings name the same render
    assert visualization_content_key(lite0, PAPER_CLASS, refs, s.resolved(lite0), seed=0) == base


def test_render_agrees_with_the_key(lite0, variants, coffee_refs, probe64):
    """What the key leaves out, the render does not read: the same bytes; what it keeps, changes them."""
    from audit.references import inner_full_references
    from audit.records import NeuronTarget

    s = VitalSettings.for_model(lite0, resolution=32, steps=3, sort_samples=None)
    inner = VitalRequest(NeuronTarget("b3", "inner", "blocks.3", 7),
                         inner_full_references(lite0, "blocks.3", 7, probe64, 3, 32))
    cls = VitalRequest(NeuronTarget("cat", "class", "classifier", 285), coffee_refs, use_relevance=False)

    def image(model, req):
        return render_vital(model, [req], s, seed=0)[0].image

    assert np.array_equal(image(lite0, inner), image(variants["blocks.5"], inner))   # after the target
    assert not np.array_equal(image(lite0, cls), image(variants["head"], cls))        # the class term reads it
    assert not np.array_equal(image(lite0, cls), image(variants["conv_head"], cls))   # the stale-image bug
    s = s.model_copy(update={"class_weight": 0.0})
    assert np.array_equal(image(lite0, cls), image(variants["head"], cls))            # without it, never run
