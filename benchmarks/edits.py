"""Known edits of EfficientNet-style timm models, each with a known ground truth: the drift
benchmark and the tests score the verdicts against them.

A "stage" is `blocks[s]` (its output is the residual stream every block of the stage writes);
the layer `bn2` is the final feature map (conv_head + bn2). Every edit returns a new model."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def _writers(model: nn.Module, layer: str) -> list[tuple[nn.Conv2d, nn.Module]]:
    """(conv, batch norm) pairs whose output channels are the channels of `layer` ("blocks.S" or
    "bn2"): every block of the stage writes the stage's stream."""
    if layer == "bn2":
        return [(model.conv_head, model.bn2)]
    stage = int(layer.split(".")[1])
    out = []
    for blk in model.blocks[stage]:
        if hasattr(blk, "conv_pwl"):
            out.append((blk.conv_pwl, blk.bn3))
        else:                                   # DepthwiseSeparableConv
            out.append((blk.conv_pw, blk.bn2))
    return out


def permute_stage_output(model: nn.Module, stage: int, perm: np.ndarray) -> nn.Module:
    """A copy whose stage `stage` output channels are permuted (every block's conv_pwl/bn3
    rows, the stage's residual consumers and the next layer's inputs): the same function,
    with channel i moved to index argwhere(perm == i)."""
    m = copy.deepcopy(model)
    p = torch.as_tensor(perm, dtype=torch.long)
    with torch.no_grad():
        for j, blk in enumerate(m.blocks[stage]):
            conv, bn = (blk.conv_pwl, blk.bn3) if hasattr(blk, "conv_pwl") else (blk.conv_pw, blk.bn2)
            conv.weight.copy_(conv.weight[p])
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(bn, name)
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


def mix_class_rows(model: nn.Module, target: int, partner: int, fraction: float) -> nn.Module:
    """A copy whose classifier row `target` is (1 - fraction) x itself + fraction x row `partner`
    (weights and bias): the target logit now also fires on the partner class."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in (m.classifier.weight, m.classifier.bias):
            t[target] = (1 - fraction) * t[target] + fraction * t[partner]
    return m


def _fold_bn(conv: nn.Conv2d, bn: nn.Module, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight row, bias) of channel c with its batch norm folded in (eval mode)."""
    scale = bn.weight[c] / torch.sqrt(bn.running_var[c] + bn.eps)
    return conv.weight[c] * scale, bn.bias[c] - bn.running_mean[c] * scale


def mix_channel(model: nn.Module, layer: str, target: int, partner: int, fraction: float) -> nn.Module:
    """A copy in which every writer of `layer`'s channel `target` computes (1 - fraction) x its own
    pre-activation + fraction x channel `partner`'s (batch norm folded, so exact per writer)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for conv, bn in _writers(m, layer):
            wt, bt = _fold_bn(conv, bn, target)
            wp, bp = _fold_bn(conv, bn, partner)
            conv.weight[target] = (1 - fraction) * wt + fraction * wp
            bn.weight[target], bn.bias[target] = 1.0, (1 - fraction) * bt + fraction * bp
            bn.running_mean[target], bn.running_var[target] = 0.0, 1.0 - bn.eps
    return m


def reinit_channel(model: nn.Module, layer: str, channel: int, seed: int) -> nn.Module:
    """A copy whose writers of `layer`'s channel draw a new random filter of the same norm."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for conv, _ in _writers(m, layer):
            row = conv.weight[channel]
            new = torch.randn(row.shape, generator=g)
            row.copy_(new * row.norm() / new.norm())
    return m


def prune_stage(model: nn.Module, stage: int, fraction: float) -> nn.Module:
    """A copy with `fraction` of the weights (smallest magnitude) of every conv of stage `stage` zeroed."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.blocks[stage].modules():
            if isinstance(mod, nn.Conv2d):
                w = mod.weight
                k = max(1, int(fraction * w.numel()))
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0.0
    return m
