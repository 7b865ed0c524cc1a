from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audit.references import (channel_maps, class_references, inner_patch_references, receptive_field,
                              topk_image_references)
from audit.relevance import lrp_backward, tap_relevance


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_lrp_backward_keeps_forward_and_restores(lite0, probe64):
    inplace = [getattr(m, "inplace", None) for m in lite0.modules()]
    with torch.no_grad():
        ref = lite0(probe64[:2])
        with lrp_backward(lite0):
            out = lite0(probe64[:2])
    torch.testing.assert_close(out, ref)
    assert _hook_count(lite0) == 0 and [getattr(m, "inplace", None) for m in lite0.modules()] == inplace


def test_relevance_hooks_removed_on_error(lite0, probe64):
    inplace = [getattr(m, "inplace", None) for m in lite0.modules()]
    with pytest.raises(IndexError):
        tap_relevance(lite0, probe64[:1], "blocks.2", 10_000, ["blocks.1"])
    assert _hook_count(lite0) == 0
    assert [getattr(m, "inplace", None) for m in lite0.modules()] == inplace


def test_relevance_concentrates_where_channel_is_active(lite0, probe64):
    x = probe64[[0, 4, 8, 12]]                                        # chelsea, coffee, rocket, astronaut
    from audit.taps import capture

    with torch.no_grad(), capture(lite0, ["blocks.4"], detach=True) as acts:
        lite0(x)
    act = acts["blocks.4"].clamp(min=0)                               # [4, 112, 4, 4]
    channels = torch.argsort(act.flatten(2).amax(-1).mean(0), descending=True)[:3].tolist()
    corr = []
    for index in channels:
        rel = tap_relevance(lite0, x, "blocks.4", index, ["blocks.2", "blocks.4", "blocks.6"])
        assert rel["blocks.2"].shape[:2] == (4, 40) and rel["blocks.6"].abs().sum() == 0
        r = F.avg_pool2d(rel["blocks.2"].sum(1, keepdim=True), 2).flatten(1)     # on the 4x4 grid
        a = act[:, index].flatten(1)
        corr += [np.corrcoef(r[i].numpy(), a[i].numpy())[0, 1] for i in range(4) if a[i].std() > 0]
        # at the target layer itself: the channel's positive part, other channels zero
        own = rel["blocks.4"]
        torch.testing.assert_close(own[:, index], act[:, index], atol=1e-4, rtol=1e-4)
        assert own[:, [c for c in range(own.shape[1]) if c != index]].abs().max() == 0
    assert np.nanmean(corr) > 0.3, corr


def test_references(lite0, sample_images, probe64):
    a = class_references([sample_images["coffee"]], 48, 5, seed=1)
    b = class_references([sample_images["coffee"]], 48, 5, seed=1)
    assert a.shape == (5, 3, 48, 48) and torch.equal(a, b)
    vals = np.arange(len(probe64))[::-1].astype(float)
    top = topk_image_references(probe64, vals, 3)
    assert torch.equal(top, probe64[:3])

    rf = receptive_field(lite0, "blocks.2", 64)
    assert 16 <= rf <= 64
    assert receptive_field(lite0, "bn1", 64) <= 5
    patches = inner_patch_references(lite0, "blocks.2", 5, probe64, 4, 64, rf=rf)
    assert patches.shape == (4, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    rand = []
    for _ in range(8):
        i = int(torch.randint(len(probe64), (1,), generator=g))
        t, l = (int(v) for v in torch.randint(0, 64 - rf + 1, (2,), generator=g))
        rand.append(F.interpolate(probe64[i:i + 1, :, t:t + rf, l:l + rf], size=(64, 64), mode="bilinear",
                                  antialias=True, align_corners=False))
    top_act = channel_maps(lite0, "blocks.2", 5, patches).flatten(1).amax(1).mean()
    rand_act = channel_maps(lite0, "blocks.2", 5, torch.cat(rand)).flatten(1).amax(1).mean()
    assert top_act > rand_act
