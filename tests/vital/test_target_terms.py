"""VITAL's optional target terms: the class term (-log p(class)) of paper-form class neurons and the
inner neuron's own channel activation. Off (weight 0), the loss is the authors'."""
from __future__ import annotations

import numpy as np
import torch

from audit.contentkeys import forward_trace, read_layers
from audit.quality import images_to_tensor
from audit.records import NeuronTarget
from audit.taps import capture, channels_first
from audit.vital import VitalRequest, VitalSettings, render_vital

CAT = NeuronTarget("cat", "class", "classifier", 285)
INNER = NeuronTarget("b4-c17", "inner", "blocks.4", 17)


def _scores(lite0, images) -> tuple[float, float]:
    """(log p(cat) of the first image, mean blocks.4[17] of the second) on Lite0."""
    x = images_to_tensor([images[0], images[1]], 48)
    with torch.no_grad(), capture(lite0, ["blocks.4"]) as acts:
        logits = lite0(x)
    return (float(torch.log_softmax(logits[0], -1)[285]), float(channels_first(acts["blocks.4"])[1, 17].mean()))


def test_target_terms_pull_the_image_to_the_class_and_the_channel(lite0, coffee_refs, probe64):
    from audit.references import inner_full_references

    inner_refs = inner_full_references(lite0, "blocks.4", 17, probe64, 2, 48)
    reqs = [VitalRequest(CAT, coffee_refs, use_relevance=False), VitalRequest(INNER, inner_refs)]
    base = dict(resolution=48, steps=8, sort_samples=None)
    off = render_vital(lite0, reqs, VitalSettings.for_model(lite0, class_weight=0.0, inner_activation_weight=0.0,
                                                            **base), seed=0)
    on = render_vital(lite0, reqs, VitalSettings.for_model(lite0, class_weight=10.0, inner_activation_weight=10.0,
                                                           **base), seed=0)
    p_off, a_off = _scores(lite0, [v.image for v in off])
    p_on, a_on = _scores(lite0, [v.image for v in on])
    assert p_on > p_off + 1.0, (p_off, p_on)          # references of coffee, but the term asks for the cat
    assert a_on > a_off, (a_off, a_on)
    assert on[0].settings["class_weight"] == 10.0 and on[1].settings["inner_activation_weight"] == 10.0


def test_weight_zero_is_the_authors_loss_and_the_key_reads_the_head(lite0, coffee_refs):
    """class_weight 0 renders the same bytes as before the option existed (no logits read), and a class
    term makes the paper form read the classifier, so a head-only change re-renders it."""
    s = VitalSettings.for_model(lite0, resolution=32, steps=2, sort_samples=None, class_weight=0.0)
    req = VitalRequest(CAT, coffee_refs, use_relevance=False)
    a = render_vital(lite0, [req], s, seed=0)[0]
    b = render_vital(lite0, [req], s.model_copy(update={"inner_activation_weight": 5.0}), seed=0)[0]
    assert np.array_equal(a.image, b.image)                     # an inner-only term leaves class neurons alone
    r = s.resolved(lite0)
    trace = forward_trace(lite0)
    assert "classifier" not in read_layers(trace, r.taps, r.tap_weights, "classifier", False)
    assert read_layers(trace, r.taps, r.tap_weights, "classifier", False, reads_target=True)[-1] == "classifier"


def test_the_class_term_leaves_a_topk_class_neuron_alone(lite0, coffee_refs):
    """The demo's planted neuron (espresso, `references: top-k`) renders in the relevance form, which has no
    class term: the fast preset's class_weight leaves its image, and so the demo's story, unchanged."""
    espresso = VitalRequest(NeuronTarget("espresso", "class", "classifier", 967), coffee_refs, use_relevance=True)
    s = VitalSettings.for_model(lite0, resolution=32, steps=2, sort_samples=None)
    assert s.class_weight > 0                                   # the fast preset has the term
    with_term = render_vital(lite0, [espresso], s, seed=0)[0]
    without = render_vital(lite0, [espresso], s.model_copy(update={"class_weight": 0.0}), seed=0)[0]
    assert np.array_equal(with_term.image, without.image)
