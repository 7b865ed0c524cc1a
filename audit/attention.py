"""Attention heads as neurons (``kind: head``, ``layer: blocks.6.attn``, ``index: h``).

What is measured and visualized. A timm attention module computes, per head h, the attention
output o_h = softmax(q_h k_h^T / sqrt(d)) v_h (a d-dimensional vector per token), concatenates
the heads and projects them (``proj``). The activation of head h at a token is the L2 norm of
its slice of that pre-projection output, ||o_h||: how much the head writes at that token. It is
read by a pre-hook on ``proj``, so it is the same whether timm runs the fused
(`scaled_dot_product_attention`) or the explicit path. Pooled over patch tokens (class and
register tokens left out, as for every token neuron) it is a neuron like any other channel:
probe statistics, drift tests, VITAL visualizations (the layer ``blocks.6.attn:heads``,
channel h) and references (its top-activating probe images) all apply unchanged.

The evidence shown next to it is the head's attention map on an image (`attention_maps`):
with a class token (ViT, DeiT, hybrids), the class token's attention to each patch; without one
(Swin's windows), the attention each token receives, averaged over the queries of its window,
put back on the image grid. Maps need the explicit attention path: fused attention is switched
off for the pass (`unfused_attention`) and restored afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import AuditInputError

__all__ = ["is_attention", "head_count", "projection", "per_head", "unfused_attention", "attention_maps"]


def is_attention(module: nn.Module) -> bool:
    """A multi-head attention module in timm's form: `num_heads` and an output projection `proj`."""
    return isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "proj", None), nn.Linear)


def head_count(module: nn.Module) -> int:
    return int(module.num_heads)


def projection(module: nn.Module) -> nn.Linear:
    """The output projection, whose input holds the heads' outputs side by side."""
    return module.proj


def per_head(x: torch.Tensor, heads: int, reduce: str = "norm") -> torch.Tensor:
    """[..., heads * d] -> [..., heads]: each head's slice reduced by its L2 norm (the head's
    activation) or by its sum (relevance, which is additive)."""
    if x.shape[-1] % heads:
        raise AuditInputError(f"attention output width {x.shape[-1]} is not a multiple of {heads} heads")
    sliced = x.unflatten(-1, (heads, x.shape[-1] // heads))
    if reduce == "norm":
        return sliced.float().norm(dim=-1).to(x.dtype)
    if reduce == "sum":
        return sliced.sum(-1)
    raise ValueError(f"unknown head reduction {reduce!r}")


@contextmanager
def unfused_attention(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block, timm attention modules take their explicit path (softmax, `attn_drop`), so
    that attention probabilities can be read and relevance rules applied; restored on exit."""
    saved: list[tuple[nn.Module, bool]] = []
    try:
        for m in modules:
            if hasattr(m, "fused_attn"):
                saved.append((m, m.fused_attn))
                m.fused_attn = False
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


def _probabilities_module(module: nn.Module) -> nn.Module:
    """The module the attention probabilities [B, heads, N, N] pass through (`attn_drop`)."""
    drop = getattr(module, "attn_drop", None)
    if not isinstance(drop, nn.Module):
        raise AuditInputError(f"attention module {type(module).__name__} has no `attn_drop`: its attention "
                              "probabilities cannot be read")
    return drop


@torch.no_grad()
def attention_maps(model: nn.Module, layer: str, head: int, images: torch.Tensor, batch: int = 16) -> np.ndarray:
    """The attention map of head `head` of the attention module `layer` on each image: [n, gh, gw].

    With class/register tokens: the first (class) token's attention to each patch token. Without
    them (Swin's windows): the attention each token receives, averaged over the queries of its
    window. Both are laid on the token grid of the module's output (`audit.taps`)."""
    from .layouts import to_canonical
    from .taps import _ForwardRecorder, get_layer

    module = get_layer(model, layer)
    if not is_attention(module):
        raise AuditInputError(f"layer {layer!r} is not an attention module with heads")
    if not 0 <= head < head_count(module):
        raise AuditInputError(f"head {head} is out of range: {layer!r} has {head_count(module)} heads")
    probs_module = _probabilities_module(module)
    param = next(model.parameters())
    recorder = _ForwardRecorder(model, [layer])
    seen: dict[str, torch.Tensor] = {}
    maps = []
    was_training = model.training
    handles = []
    try:
        model.eval()
        handles.extend(recorder.install())
        handles.append(probs_module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("p", out)))
        handles.append(module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out)))
        with unfused_attention([module]):
            for i in range(0, images.shape[0], batch):
                seen.clear()
                model(images[i:i + batch].to(device=param.device, dtype=param.dtype))
                if "p" not in seen:
                    raise AuditInputError(f"attention module {layer!r} did not compute explicit probabilities")
                p = seen["p"][:, head].float()                                 # [B(*nW), N, N]
                layout = recorder.layout(layer, module, tuple(seen["out"].shape))
                if layout is None:
                    raise AuditInputError(f"cannot place the tokens of {layer!r} on a grid")
                if layout.prefix:
                    per_token = p[:, 0, :]                                     # the class token's row
                else:
                    per_token = p.mean(1)                                      # received, averaged over queries
                m = to_canonical(per_token.unsqueeze(-1), layout, "patches")   # [B, 1, gh, gw] or [B, 1, N]
                maps.append(m[:, 0].cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return torch.cat(maps).numpy()
