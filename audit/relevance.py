"""LRP relevance of a target (a channel at a layer, spatially summed, or a class logit) at taps.

Rule, honestly stated: a composite LRP written in its activation x gradient form, with
modified backward passes installed by forward hooks, so it works on any timm model:

* convolutions (plain nn.Conv2d): z+ / alpha1-beta0 (only positive contributions
  (x_i w_ij)^+ carry relevance; the hook returns ``z+ * (out / z+).detach()``, whose
  gradient times the activation is exactly that rule) - this is the rule family of the
  VITAL authors' LRP (z+ with flows through skips), and measured here it localizes far
  better than LRP-0: on 64 px crops of the sample photographs the spatial correlation
  between the relevance at blocks.2 of Lite0 and the activation of a blocks.4 target
  channel was ~0.5-0.8 with z+ against -0.7..0.7 (mean ~0.2) with LRP-0;
* element-wise nonlinearities (ReLU, ReLU6, SiLU/Swish, GELU, Hardswish, LeakyReLU, ...)
  pass the gradient scaled by f(x)/x instead of f'(x) (fixed gates); with that, linear
  layers, BatchNorm (affine in eval mode) and residual additions follow LRP-0 (biases
  absorb their share; sums split relevance in proportion to their inputs);
* multiplicative gates (nn.Sigmoid/Hardsigmoid modules, e.g. squeeze-excitation) are
  constants (relevance flows through the gated signal only);
* LayerNorm (incl. timm's LayerNorm2d) has its standard deviation detached (AttnLRP's
  identity rule for normalization);
* not handled: the softmax of attention (timm computes it inside fused functions that
  hooks cannot reach), so for ViTs relevance through attention follows the plain gradient;
  GroupNorm and padding-"same" convolutions keep their ordinary gradient.

Why this way: hooks alone (no per-architecture LRP model as in the authors' code), one
forward (plus one extra convolution per conv layer for z+) and one backward for all taps and
any number of targets. VITAL only uses relevance after per-channel min-max normalization, so
the rule's global scale and conservation defects (bias absorption) do not matter.
``conv_rule="lrp0"`` switches the convolutions back to LRP-0 (gradient x input).

Relevance at tap t: R_t = a_t * dT/da_t under the modified backward, with T the target
(summed over the batch; samples are independent in eval mode, so each gets its own).
Every hook lives in a context manager (`lrp_backward`) that removes it, also on error.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .taps import capture, channels_first, get_layer

__all__ = ["lrp_backward", "tap_relevance", "target_value"]

_GATE_ACTS: tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish,
                                nn.Softplus, nn.Tanh, nn.CELU, nn.SELU)
_CONST_GATES: tuple[type, ...] = (nn.Sigmoid, nn.Hardsigmoid)


def _timm_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    acts: list[type] = []
    gates: list[type] = []
    try:
        from timm.layers import activations as ta

        for name in ("Swish", "Mish", "GELU", "GELUTanh", "HardSwish", "QuickGELU", "Tanh", "PReLU"):
            if hasattr(ta, name):
                acts.append(getattr(ta, name))
        for name in ("Sigmoid", "HardSigmoid"):
            if hasattr(ta, name):
                gates.append(getattr(ta, name))
        from timm.layers import activations_me as tam  # memory-efficient variants

        for name in ("SwishMe", "MishMe", "HardSwishMe"):
            if hasattr(tam, name):
                acts.append(getattr(tam, name))
        for name in ("HardSigmoidMe",):
            if hasattr(tam, name):
                gates.append(getattr(tam, name))
    except ImportError:
        pass
    return tuple(acts), tuple(gates)


def _gate_hook(_m, inputs, out):
    x = inputs[0]
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor) or x.shape != out.shape:
        return None
    with torch.no_grad():
        safe = torch.where(x.abs() > 1e-12, x, torch.ones_like(x))
        gate = torch.where(x.abs() > 1e-12, out / safe, torch.zeros_like(x))
    lin = x * gate
    return out.detach() + (lin - lin.detach())


def _zplus_conv_hook(m, inputs, out):
    """z+ (alpha1-beta0) for convolutions: out' = z+ * (out / z+).detach(), so that
    activation x gradient passes R_i = sum_j (x_i w_ij)^+ / z+_j R_j."""
    x = inputs[0]
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return None
    w = m.weight
    zp = m._conv_forward(x.clamp(min=0), w.clamp(min=0), None) + m._conv_forward(x.clamp(max=0), w.clamp(max=0), None)
    if zp.shape != out.shape:
        return None
    with torch.no_grad():
        ok = zp > 1e-6
        ratio = torch.where(ok, out / torch.where(ok, zp, torch.ones_like(zp)), torch.zeros_like(zp))
    mod = zp * ratio
    return out.detach() + (mod - mod.detach())


def _const_hook(_m, _inputs, out):
    return out.detach() if isinstance(out, torch.Tensor) else None


def _layernorm_hook(m, inputs, out):
    x = inputs[0]
    channel_dim = 1 if type(m).__name__ in ("LayerNorm2d", "LayerNormChannel") else None
    if channel_dim is None:
        dims = tuple(range(-len(m.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        lin = (x - mean) / (var + m.eps).sqrt().detach()
        if m.weight is not None:
            lin = lin * m.weight
        if m.bias is not None:
            lin = lin + m.bias
    else:
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        lin = (x - mean) / (var + m.eps).sqrt().detach()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if m.weight is not None:
            lin = lin * m.weight.view(shape)
        if m.bias is not None:
            lin = lin + m.bias.view(shape)
    if lin.shape != out.shape:
        return None
    return out.detach() + (lin - lin.detach())


@contextmanager
def lrp_backward(model: nn.Module, conv_rule: str = "zplus") -> Iterator[nn.Module]:
    """Inside the block, backward passes through `model` follow the LRP-0 rules of this module.

    Forward values are unchanged. In-place activations are switched to out-of-place while the
    block runs (their inputs are needed); hooks and flags are restored on exit, also on error.
    """
    timm_acts, timm_gates = _timm_types()
    acts = _GATE_ACTS + timm_acts
    gates = _CONST_GATES + timm_gates
    handles = []
    inplace_flags: list[tuple[nn.Module, bool]] = []
    try:
        for m in model.modules():
            if isinstance(m, gates):
                handles.append(m.register_forward_hook(_const_hook))
            elif isinstance(m, acts):
                if getattr(m, "inplace", False):
                    inplace_flags.append((m, True))
                    m.inplace = False
                handles.append(m.register_forward_hook(_gate_hook))
            elif conv_rule == "zplus" and isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:
                handles.append(m.register_forward_hook(_zplus_conv_hook))
            elif isinstance(m, nn.LayerNorm):
                handles.append(m.register_forward_hook(_layernorm_hook))
        yield model
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace_flags:
            m.inplace = flag


def target_value(acts: dict[str, torch.Tensor], layers: Sequence[str], indices: Sequence[int],
                 positive: bool = True) -> torch.Tensor:
    """Per-sample target: channel `index` of `layer` summed over positions (tokens), per batch element.

    With `positive`, only where the channel fires (its positive part) is summed: the same for
    post-activation layers, and for linear outputs (EfficientNet's projection convs, residual
    streams) it keeps the target on what the neuron detects instead of letting negative regions
    cancel it. Vectors (logits) are taken as they are.
    """
    vals = []
    for b, (layer, index) in enumerate(zip(layers, indices)):
        a = channels_first(acts[layer][b:b + 1])[0, index]
        if positive and a.numel() > 1:
            a = a.clamp(min=0)
        vals.append(a.sum())
    return torch.stack(vals)


def tap_relevance(model: nn.Module, x: torch.Tensor, target_layer: str | Sequence[str], index: int | Sequence[int],
                  taps: Sequence[str], positive: bool = True, conv_rule: str = "zplus") -> dict[str, torch.Tensor]:
    """LRP-0 relevance (gradient x activation, modified backward) of the target at each tap.

    x: [B, 3, H, W]; target_layer/index: one target for the batch or one per batch element
    (a class logit is the classifier layer and the class index); an inner target is the channel
    summed over positions, its positive part only when `positive` (see `target_value`). Returns, per tap, a tensor in
    the tap's own layout ([B, C, H, W] for conv maps, [B, N, C] for tokens), detached. Taps the
    target does not depend on (after the target layer) get zeros.
    """
    b = x.shape[0]
    layers = [target_layer] * b if isinstance(target_layer, str) else list(target_layer)
    indices = [int(index)] * b if isinstance(index, int) else [int(i) for i in index]
    if len(layers) != b or len(indices) != b:
        raise ValueError("one target per batch element (or one for all) is needed")
    for name in set(layers) | set(taps):
        get_layer(model, name)      # fail early with a readable message
    names = list(dict.fromkeys(list(taps) + layers))
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), lrp_backward(model, conv_rule), capture(model, names) as acts:
        model(x)
        target = target_value(acts, layers, indices, positive).sum()
        tap_acts = [acts[t] for t in taps]
        grads = torch.autograd.grad(target, tap_acts, allow_unused=True)
    out: dict[str, torch.Tensor] = {}
    for t, a, g in zip(taps, tap_acts, grads):
        out[t] = torch.zeros_like(a).detach() if g is None else (a.detach() * g)
    return out
