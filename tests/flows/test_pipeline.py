"""Content keys and comparison pairs: what makes the flow incremental."""
import torch

from audit.config import NeuronConfig
from audit.pipeline import upstream_weights_sha256, visualization_content_key
from flows.work import comparison_pairs


def test_head_only_change_keeps_upstream_hash_of_taps(lite0):
    import copy

    v2 = copy.deepcopy(lite0)
    with torch.no_grad():
        v2.classifier.weight[967] += 1.0
    taps = ["blocks.0", "blocks.6"]
    assert upstream_weights_sha256(lite0, taps) == upstream_weights_sha256(v2, taps)
    assert upstream_weights_sha256(lite0, taps + ["classifier"]) != upstream_weights_sha256(v2, taps + ["classifier"])
    with torch.no_grad():
        v2.blocks[6][0].conv_pw.weight.mul_(0.5)
    assert upstream_weights_sha256(lite0, ["blocks.2"]) == upstream_weights_sha256(v2, ["blocks.2"])
    assert upstream_weights_sha256(lite0, taps) != upstream_weights_sha256(v2, taps)


def test_content_key_reuses_paper_form_class_neuron_across_head_change(lite0):
    import copy

    v2 = copy.deepcopy(lite0)
    with torch.no_grad():
        v2.classifier.weight[285] += 1.0
    from audit.vital import VitalSettings

    refs = torch.zeros(2, 3, 8, 8)
    # the authors' loss (no class term) never reads the head: a head-only change reuses the image
    settings = VitalSettings.for_model(lite0, steps=3, taps=["blocks.0", "blocks.2"], class_weight=0.0)
    paper = NeuronConfig(id="cat", kind="class", layer="classifier", index=285, references="builtin:samples/chelsea")
    topk = NeuronConfig(id="cat2", kind="class", layer="classifier", index=285, references="top-k")
    key = lambda m, n: visualization_content_key(m, n, refs, settings, 0)  # noqa: E731
    assert key(lite0, paper) == key(v2, paper)
    assert key(lite0, topk) != key(v2, topk)
    assert key(lite0, paper) != visualization_content_key(lite0, paper, refs, settings, 1)
    # the fast preset's class term (-log p(class)) reads the head: the same change re-renders it
    with_term = VitalSettings.for_model(lite0, steps=3, taps=["blocks.0", "blocks.2"])
    assert with_term.class_weight > 0
    assert (visualization_content_key(lite0, paper, refs, with_term, 0)
            != visualization_content_key(v2, paper, refs, with_term, 0))


def test_comparison_pairs_predecessor_and_champion():
    assert comparison_pairs(["1", "2", "3"], "1") == [("1", "2"), ("2", "3"), ("1", "3")]
    assert comparison_pairs(["1", "2", "3"], "2") == [("1", "2"), ("2", "3")]
    assert comparison_pairs(["1", "2", "3"], None, only="3") == [("2", "3")]
