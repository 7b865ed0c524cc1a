"""LRP relevance of a target (a channel at a layer, summed over positions, or a class logit) at taps.

The rules are `audit.lrp_rules` (registered by module type, Zennit-style): z+ on convolutions
that mix channels (``conv_rule="zplus"``, default; ``"zplus-all"`` also on depthwise ones,
``"epsilon"`` gives LRP-0), the identity rule on
element-wise activations, gates as constants, LayerNorm/GroupNorm with the standard deviation
constant, and attention by CP-LRP (``attention_rule="cp"``, default: Ali et al. ICML 2022,
attention probabilities constant, conservative) or AttnLRP (``"attnlrp"``: Achtibat et al. ICML
2024). All are written in gradient x input form, so relevance at tap t is R_t = a_t * dT/da_t
under the modified backward, with T the target (summed over the batch; samples are independent in
eval mode, so each gets its own). The module docstring of `audit.lrp_rules` states each rule and
what is not handled (an unknown module type is reported, not silently passed).

Why this way: hooks alone (no per-architecture LRP model as in the VITAL authors' code), and the
rules change only the backward. One forward then serves the relevance of the synthetic image and
the loss that reads the same taps (`RelevancePass`): one forward, one LRP backward from the target
to the shallowest tap, one ordinary backward (benchmarks/fv_speed.py --families). VITAL uses
relevance only after per-channel min-max normalization, so the rules' global scale and the
relevance biases absorb do not matter there; `tests/archs` checks conservation where the rule
promises it (CP-LRP on a bias-free ViT).

Every hook lives in a context manager that removes it, also on error.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .lrp_rules import LRPState, install_rules
from .taps import Captured, capture, channels_first, describe_layers, get_layer
from .layouts import parse_layer_name

__all__ = ["lrp_backward", "tap_relevance", "target_value", "RelevancePass", "relevance_pass",
           "activations_and_relevance"]


@contextmanager
def lrp_backward(model: nn.Module, conv_rule: str = "zplus", attention_rule: str = "cp",
                 on_unknown: str = "warn") -> Iterator[nn.Module]:
    """Inside the block, every backward pass through `model` follows the LRP rules.

    Forward values are unchanged. In-place activations are switched to out-of-place and fused
    attention to the explicit path while the block runs; all is restored on exit, also on error.
    """
    installed = install_rules(model, LRPState(active=True), conv_rule, attention_rule, on_unknown)
    try:
        yield model
    finally:
        installed.remove()


def target_value(acts: dict[str, torch.Tensor], layers: Sequence[str], indices: Sequence[int],
                 positive: bool = True, rows: Sequence[int] | None = None) -> torch.Tensor:
    """Per-sample target: channel `index` of `layer` summed over positions (tokens), per batch element.

    `acts` are channels-first activations (`audit.taps.capture`); `rows[k]` is the batch row of the
    k-th target (default: k). With `positive`, only where the channel fires (its positive part) is
    summed: the same for post-activation layers, and for linear outputs (EfficientNet's projection
    convs, residual streams) it keeps the target on what the neuron detects instead of letting
    negative regions cancel it. Vectors (logits) are taken as they are.
    """
    rows = list(range(len(layers))) if rows is None else list(rows)
    vals = []
    for b, layer, index in zip(rows, layers, indices):
        a = channels_first(acts[layer][b:b + 1])
        if not 0 <= index < a.shape[1]:
            raise IndexError(f"index {index} is out of range for layer {layer!r} ({a.shape[1]} channels)")
        a = a[0, index]
        if positive and a.numel() > 1:
            a = a.clamp(min=0)
        vals.append(a.sum())
    return torch.stack(vals)


class RelevancePass:
    """One forward whose activations serve both LRP relevance and an ordinary loss.

    Made by `relevance_pass`. After the forward, `activations` are the taps' channels-first
    activations (in the graph, for a loss), and `relevance` runs the LRP backward from targets to
    the taps (retaining the graph), so that the loss can then be back-propagated normally."""

    def __init__(self, captured: Captured, state: LRPState, taps: Sequence[str]):
        self._captured, self._state, self.taps = captured, state, list(taps)

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        return {t: self._captured.canonical(t) for t in self.taps}

    def relevance(self, layers: Sequence[str], indices: Sequence[int], rows: Sequence[int] | None = None,
                  positive: bool = True) -> dict[str, torch.Tensor]:
        """LRP relevance at each tap of the targets (channel `indices[k]` of `layers[k]` for batch row
        `rows[k]`), channels first and detached, one row per target. Taps the targets do not depend
        on (after the target layer) get zeros."""
        rows = list(range(len(layers))) if rows is None else list(rows)
        canon = {name: self._captured.canonical(name) for name in dict.fromkeys(layers)}
        target = target_value(canon, layers, indices, positive, rows).sum()
        raw = [self._captured[t] for t in self.taps]
        self._state.active = True
        try:
            grads = torch.autograd.grad(target, raw, retain_graph=True, allow_unused=True)
        finally:
            self._state.active = False
        out: dict[str, torch.Tensor] = {}
        idx = torch.as_tensor(rows, dtype=torch.long)
        for t, a, g in zip(self.taps, raw, grads):
            r = torch.zeros_like(a) if g is None else a.detach() * g
            out[t] = self._captured.canonical(t, r, reduce_heads="sum")[idx.to(r.device)]
        return out


@contextmanager
def relevance_pass(model: nn.Module, taps: Sequence[str], targets: Sequence[str] = (), conv_rule: str = "zplus",
                   attention_rule: str = "cp", on_unknown: str = "warn") -> Iterator[RelevancePass]:
    """Inside the block, run one forward of `model`; then read `.activations` and call `.relevance`.

    `targets` are the layers relevance will start from (recorded as well). The rules are installed
    for the block (normal gradient outside `.relevance`) and removed on exit, also on error."""
    names = list(dict.fromkeys(list(taps) + list(targets)))
    state = LRPState(active=False)
    installed = install_rules(model, state, conv_rule, attention_rule, on_unknown)
    try:
        with capture(model, names, raw=True) as captured:     # after the rules: taps read the rule nodes' outputs
            yield RelevancePass(captured, state, taps)
    finally:
        installed.remove()


class _StopForward(Exception):
    pass


def _deepest(model: nn.Module, names: Sequence[str]) -> str | None:
    """The name whose module runs last among `names` (forward order of `describe_layers`)."""
    order = {n: i for i, n in enumerate(describe_layers(model))}
    keys = [(order.get(parse_layer_name(n).module + (":heads" if parse_layer_name(n).heads else "")), n) for n in names]
    if any(k is None for k, _ in keys):
        return None
    return max(keys)[1]


def activations_and_relevance(model: nn.Module, x: torch.Tensor, taps: Sequence[str], target_layers: Sequence[str],
                              indices: Sequence[int], rows: Sequence[int] | None = None, positive: bool = True,
                              conv_rule: str = "zplus", attention_rule: str = "cp"
                              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward of `x` for a relevance-weighted loss (VITAL's relevance form).

    Returns the taps' channels-first activations, in the graph, and the LRP relevance of each
    target (channel `indices[k]` of `target_layers[k]`, for batch row `rows[k]`) at the taps,
    detached, one row per target. A loss of the activations back-propagated afterwards gets the
    true gradient: the rules act only inside this call. The forward stops after the deepest of the
    taps and target layers. Costs one forward, one LRP backward (targets to the shallowest tap) and
    nothing more, against a separate `tap_relevance` pass plus a forward for the loss."""
    stop = _deepest(model, list(taps) + list(target_layers))
    with torch.enable_grad(), relevance_pass(model, taps, target_layers, conv_rule, attention_rule) as rp:
        _run_until(model, x, stop)
        relevance = rp.relevance(target_layers, indices, rows, positive)
        return rp.activations, relevance


def _run_until(model: nn.Module, x: torch.Tensor, stop: str | None) -> None:
    handle = get_layer(model, stop).register_forward_hook(_raise_stop) if stop else None
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()


def tap_relevance(model: nn.Module, x: torch.Tensor, target_layer: str | Sequence[str], index: int | Sequence[int],
                  taps: Sequence[str], positive: bool = True, conv_rule: str = "zplus",
                  attention_rule: str = "cp") -> dict[str, torch.Tensor]:
    """LRP relevance (gradient x activation, modified backward) of the target at each tap.

    x: [B, 3, H, W]; target_layer/index: one target for the batch or one per batch element
    (a class logit is the classifier layer and the class index); an inner target is the channel
    summed over positions, its positive part only when `positive` (see `target_value`). Returns, per
    tap, a detached channels-first tensor ([B, C, H, W] maps and token grids, [B, C, N], [B, C]),
    like `audit.taps.capture`. Taps the target does not depend on (after the target layer) get zeros.
    The forward stops after the deepest of the taps and target layers.
    """
    b = x.shape[0]
    layers = [target_layer] * b if isinstance(target_layer, str) else list(target_layer)
    indices = [int(index)] * b if isinstance(index, int) else [int(i) for i in index]
    if len(layers) != b or len(indices) != b:
        raise ValueError("one target per batch element (or one for all) is needed")
    for name in set(layers) | set(taps):
        get_layer(model, name)      # fail early with a readable message
    stop = _deepest(model, list(taps) + layers)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), relevance_pass(model, taps, layers, conv_rule, attention_rule) as rp:
        _run_until(model, x, stop)
        return rp.relevance(layers, indices, positive=positive)


def _raise_stop(_m, _i, _o):
    raise _StopForward
