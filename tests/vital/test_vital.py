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


def test_defaults_and_registry(lite0):
    assert vital_default_taps(lite0) == ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "bn2"]
    s = VitalSettings.for_model(lite0)
    assert s.lr == 0.25
    register_family_defaults("efficientnet_lite", lr=0.3)
    try:
        assert VitalSettings.for_model("efficientnet_lite0").lr == 0.3
        assert VitalSettings.for_model("efficientnet_b0").lr == 0.25
    finally:
        register_family_defaults("efficientnet_lite", **family_defaults("efficientnet"))
    with pytest.raises(ValueError):
        register_family_defaults("x", not_a_field=1)


def test_short_run_loss_falls_and_outputs(lite0, coffee_refs):
    req = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    (vis,) = render_vital(lite0, [req], _settings(lite0, steps=25), seed=0)
    assert vis.image.shape == (64, 64, 3) and vis.image.dtype == np.uint8
    assert vis.mask is not None and vis.mask.shape == (64, 64) and 0 <= vis.mask.min() and vis.mask.max() <= 1
    assert len(vis.loss_history) == 25
    assert np.mean(vis.loss_history[-3:]) < 0.6 * vis.loss_history[0]
    assert vis.settings["taps"] == vital_default_taps(lite0) and vis.method == "vital"
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
    from audit.references import inner_patch_references

    patches = inner_patch_references(lite0, "blocks.2", 5, probe64, 4, 64, rf=40)
    r1 = VitalRequest(NeuronTarget("coffee", "class", "classifier", 967), coffee_refs, use_relevance=False)
    r2 = VitalRequest(NeuronTarget("b2c5", "inner", "blocks.2", 5), patches)
    s = _settings(lite0, steps=12, resolution=48)
    both = render_vital(lite0, [r1, r2], s, seed=0)
    alone = [render_vital(lite0, [r], s, seed=0)[0] for r in (r1, r2)]
    assert [v.neuron_id for v in both] == ["coffee", "b2c5"]
    assert both[1].settings["use_relevance"] is True and both[0].settings["use_relevance"] is False
    # the relevance-weighted loss is noisier (its weights are recomputed every step): wider band
    for vb, va, tol in zip(both, alone, (0.25, 0.5)):
        fb, fa = np.mean(vb.loss_history[-5:]), np.mean(va.loss_history[-5:])
        assert abs(fb - fa) < tol * max(fa, fb), (vb.neuron_id, fb, fa)
        assert np.mean(vb.loss_history[-3:]) < vb.loss_history[0]


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
