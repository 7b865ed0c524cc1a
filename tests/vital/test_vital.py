from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.records import NeuronTarget
from audit.references import class_references
from audit.taps import channels_first
from audit.vital import (VitalRequest, VitalSettings, family_defaults, register_family_defaults, render_vital,
                         vital_default_taps)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _inplace_flags(model):
    return [getattr(m, "inplace", None) for m in model.modules()]


def _settings(model, **kw):
    base = dict(resolution=64, steps=20, sort_samples=None)
    base.update(kw)
    return VitalSettings.for_model(model, **base)


def test_presets_defaults_and_registry(lite0):
    from audit.presets import PRESETS

    assert vital_default_taps(lite0) == ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "bn2"]
    fast = VitalSettings.for_model(lite0)
    assert fast.preset == "fast" and fast.lr == PRESETS["fast"].settings["lr"]
    paper = VitalSettings.for_model(lite0, preset="paper").resolved(lite0)
    # the authors' settings (adagorgun/VITAL), written out independently of audit/presets.py
    assert (paper.steps, paper.lr, tuple(paper.betas), paper.warmup, paper.flip, paper.sort_samples) == \
        (2000, 1.0, (0.5, 0.9), 100, False, None)
    assert paper.taps == ["conv_stem", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert paper.tap_weights == [1.0] * 5 and paper.inner_tap_weights == [0.1, 1.0, 1.0, 1.0, 0.0]
    assert paper.jitter == 30 and paper.resolution == 224 and (paper.tv_l2, paper.l2) == (0.0, 0.0)
    assert VitalSettings.for_model(lite0, preset="paper", lr=0.5).lr == 0.5          # explicit keys win
    register_family_defaults("efficientnet_lite", lr=0.3)
    try:
        assert VitalSettings.for_model("efficientnet_lite0").lr == 0.3
        assert VitalSettings.for_model("efficientnet_b0").lr == fast.lr
    finally:
        register_family_defaults("efficientnet_lite", **family_defaults("efficientnet"))
    with pytest.raises(ValueError):
        register_family_defaults("x", not_a_field=1)
    with pytest.raises(ValueError, match="unknown VITAL preset"):
        VitalSettings.for_model(lite0, preset="quick")


def test_short_run_loss_falls_and_outputs(lite0, coffee_refs):
    req = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    (vis,) = render_vital(lite0, [req], _settings(lite0, steps=25), seed=0)
    assert vis.image.shape == (64, 64, 3) and vis.image.dtype == np.uint8
    assert vis.mask is not None and vis.mask.shape == (64, 64) and 0 <= vis.mask.min() and vis.mask.max() <= 1
    assert len(vis.loss_history) == 25
    assert np.mean(vis.loss_history[-3:]) < 0.6 * vis.loss_history[0]
    assert vis.settings["taps"] == vital_default_taps(lite0) and vis.method == "vital"
    # the fast preset weights the map the classifier pools (bn2), whose spatial mean the logits are linear in
    assert vis.settings["resolution"] == 64 and vis.settings["tap_weights"] == [1.0] * 6 + [30.0]
    assert 0 < vis.loop_seconds < vis.seconds        # the rest is reference preparation
    assert not lite0.training and all(p.requires_grad for p in lite0.parameters())


def test_seeded_same_bytes(lite0, coffee_refs):
    req = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    s = _settings(lite0, steps=6, sort_samples=256)
    a, b, c = (render_vital(lite0, [req], s, seed=sd)[0] for sd in (3, 3, 4))
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.loss_history == b.loss_history
    assert a.image.tobytes() != c.image.tobytes()


def test_batched_matches_alone(lite0, coffee_refs, probe64):
    """Same seed: an element of a batch gets the same bytes, losses and mask as the neuron alone."""
    from audit.references import inner_patch_references

    patches = inner_patch_references(lite0, "blocks.2", 5, probe64, 4, 64, rf=40)
    r1 = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    r2 = VitalRequest(NeuronTarget("b2c5", "inner", "blocks.2", 5), patches)
    s = _settings(lite0, steps=12, resolution=48, sort_samples=256)
    both = render_vital(lite0, [r1, r2], s, seed=0)
    alone = [render_vital(lite0, [r], s, seed=0)[0] for r in (r1, r2)]
    assert [v.neuron_id for v in both] == ["coffee", "b2c5"]
    assert both[1].settings["use_relevance"] is True and both[0].settings["use_relevance"] is False
    for vb, va in zip(both, alone):
        assert vb.image.tobytes() == va.image.tobytes(), vb.neuron_id
        assert vb.loss_history == va.loss_history and vb.mask.tobytes() == va.mask.tobytes()
        assert np.mean(vb.loss_history[-3:]) < vb.loss_history[0]
    # the inner neuron reads nothing after its target
    assert both[1].settings["read_taps"] == ["bn1", "blocks.0", "blocks.1", "blocks.2"]


def test_batched_forward_differs_only_by_float_summation(lite0, coffee_refs):
    """One batched forward (the CUDA default): the same draws and the same first loss up to float
    rounding; later steps are free to pair near-tied values with other quantiles."""
    r1 = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    s = _settings(lite0, steps=4, resolution=48, batched_forward=True)
    alone = render_vital(lite0, [r1], s, seed=0)[0]
    pair = render_vital(lite0, [r1, r1], s, seed=0)
    assert pair[0].image.tobytes() == pair[1].image.tobytes()        # elements never see each other
    assert pair[0].loss_history[0] == pytest.approx(alone.loss_history[0], rel=1e-5)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test: with two, some CPU reductions of the VITAL step are summed
    in a run-dependent order (the 7th digit of the loss differs from process to process, measured on this
    project's 2-core CI machine), and a plateau test on a noisy 32 px loss then stops a step earlier or
    later. Comparisons of whole early-stopped runs are only byte-exact on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_element_converges_on_its_own(lite0, coffee_refs, one_thread):
    """Per-element early stopping: a converged element is frozen where it would have stopped alone."""
    r1 = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    s = _settings(lite0, steps=40, resolution=32, plateau_patience=3, plateau_min_steps=6, plateau_tol=0.05)
    alone = render_vital(lite0, [r1], s, seed=0)[0]
    assert alone.settings["stopped_early"] and alone.settings["steps_run"] < 40
    r2 = VitalRequest(NeuronTarget("coffee-b", "class", "classifier", 967), coffee_refs, use_relevance=False)
    both = render_vital(lite0, [r1, r2], s.model_copy(update={"plateau_tol": 0.05}), seed=0)
    assert both[0].image.tobytes() == alone.image.tobytes() and both[0].loss_history == alone.loss_history


def test_runs_on_the_models_device_without_moving_it(lite0, coffee_refs, monkeypatch):
    def no_move(*_a, **_k):
        raise AssertionError("render_vital moved the model")

    monkeypatch.setattr(lite0, "to", no_move)
    req = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    (vis,) = render_vital(lite0, [req], _settings(lite0, steps=2, resolution=32), seed=0)
    assert vis.settings["device"] == "cpu"


def test_hooks_removed_when_render_fails(lite0, coffee_refs):
    before_hooks, before_inplace = _hook_count(lite0), _inplace_flags(lite0)
    req = VitalRequest(NeuronTarget("c", "inner", "blocks.2", 3), coffee_refs, use_relevance=True)

    def boom(step, losses):
        if step == 1:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        render_vital(lite0, [req], _settings(lite0, steps=5), seed=0, progress=boom)
    assert _hook_count(lite0) == before_hooks
    assert _inplace_flags(lite0) == before_inplace
    assert all(p.requires_grad for p in lite0.parameters())


def test_bad_tap_weights_rejected(lite0, coffee_refs):
    req = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs)
    with pytest.raises(ValueError):
        render_vital(lite0, [req], _settings(lite0, tap_weights=[1.0, 2.0]), seed=0)
    assert _hook_count(lite0) == 0


def test_vit_token_layout(tiny_vit, sample_images):
    taps = vital_default_taps(tiny_vit)
    assert taps[0] == "patch_embed" and all(t.startswith("blocks.") for t in taps[1:])
    from audit.taps import final_feature_layer
    assert final_feature_layer(tiny_vit) == "norm"       # same width as the last block: not an extra tap
    refs = class_references([sample_images["rocket"]], 64, 3, seed=0)
    from audit.taps import capture

    with torch.no_grad(), capture(tiny_vit, taps) as acts:
        tiny_vit(refs)
    # channels first, the 16 patch tokens on their 4x4 grid, the class token left out (audit.layouts)
    assert acts["blocks.0"].shape == (3, 192, 4, 4) and channels_first(acts["blocks.0"]).shape == (3, 192, 16)
    reqs = [VitalRequest(NeuronTarget("rocket", "class", "head", 3), refs, use_relevance=False),
            VitalRequest(NeuronTarget("t7", "inner", "blocks.3", 7), refs, use_relevance=True)]
    out = render_vital(tiny_vit, reqs, VitalSettings.for_model(tiny_vit, resolution=64, steps=6), seed=0)
    for v in out:
        assert v.image.shape == (64, 64, 3) and np.isfinite(v.loss_history).all()
        assert v.loss_history[-1] < v.loss_history[0]
    assert _hook_count(tiny_vit) == 0
