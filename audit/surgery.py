"""Known edits of EfficientNet-style timm models, each with a known ground truth:
the drift benchmark and the tests score the verdicts against them."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def permute_stage_output(model: nn.Module, stage: int, perm: np.ndarray) -> nn.Module:
    """A copy whose stage `stage` output channels are permuted (every block's conv_pwl/bn3
    rows, the stage's residual consumers and the next layer's inputs): the same function,
    with channel i moved to index argwhere(perm == i)."""
    m = copy.deepcopy(model)
    p = torch.as_tensor(perm, dtype=torch.long)
    with torch.no_grad():
        for j, blk in enumerate(m.blocks[stage]):
            blk.conv_pwl.weight.copy_(blk.conv_pwl.weight[p])
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(blk.bn3, name)
                t.copy_(t[p])
            if j > 0:
                blk.conv_pw.weight.copy_(blk.conv_pw.weight[:, p])
        nxt = m.blocks[stage + 1][0].conv_pw if stage + 1 < len(m.blocks) else m.conv_head
        nxt.weight.copy_(nxt.weight[:, p])
    return m


def swap_class_rows(model: nn.Module, i: int, j: int) -> nn.Module:
    """A copy whose classifier rows i and j (weights and bias) are swapped."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in (m.classifier.weight, m.classifier.bias):
            t[[i, j]] = t[[j, i]].clone()
    return m
