"""Fixtures for the drift tests: a small probe set (96 px, 4 crops per photograph) and
helpers that build Lite0 variants with a known ground truth."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def small_probe():
    from audit.probe import build_probe_set

    return build_probe_set("builtin:samples", size=96, crops_per_image=4)


def permute_stage_output(model, stage: int, perm: np.ndarray):
    """A copy of an EfficientNet whose stage `stage` output channels are permuted (every
    block's conv_pwl/bn3 rows, the stage's residual consumers and the next layer's
    inputs): same function, channel i moves to index argwhere(perm == i)."""
    m = copy.deepcopy(model)
    p = torch.as_tensor(perm, dtype=torch.long)
    blocks = m.blocks[stage]
    with torch.no_grad():
        for j, blk in enumerate(blocks):
            blk.conv_pwl.weight.copy_(blk.conv_pwl.weight[p])
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(blk.bn3, name)
                t.copy_(t[p])
            if j > 0:
                blk.conv_pw.weight.copy_(blk.conv_pw.weight[:, p])
        nxt = m.blocks[stage + 1][0].conv_pw if stage + 1 < len(m.blocks) else m.conv_head
        nxt.weight.copy_(nxt.weight[:, p])
    return m


def swap_classes(model, i: int, j: int):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in (m.classifier.weight, m.classifier.bias):
            t[[i, j]] = t[[j, i]].clone()
    return m


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (tests/ folders are not packages)."""
    class H:
        pass
    h = H()
    h.permute_stage_output = staticmethod(permute_stage_output)
    h.swap_classes = staticmethod(swap_classes)
    h.ForwardCounter = ForwardCounter
    return h
