"""Activation statistics of registered neurons on the probe set.

Convention (DESIGN.md): a class neuron's value is its logit (max = mean = logit); an
inner neuron's values are the spatial max and spatial mean of its channel (tokens:
max/mean over tokens). Layers with a square map (or a square token grid) also keep each
channel's map mean-pooled to at most 4x4 cells (`LayerActivations.grid`): where a channel
fires, for the drift evidence.

Activations are computed per *layer* (all channels at once) in one pass over the probe
set and cached by (`STATS_VERSION`, the model's content key — weights, module tree,
architecture and `model_args`, `audit.contentkeys.model_content_key` —, probe SHA-256 —
which covers the preprocessing —, layer): in memory (LRU) and, when a cache directory is
set, on disk as .npz. Computing twice for the same version then costs no forward pass, and
any neuron of an already seen layer is a cache hit too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .contentkeys import STATS_VERSION, model_content_key
from .models import fast_layout
from .npzcache import NpzCache
from .probe import ProbeSet
from .records import ActivationStats, NeuronTarget
from .taps import capture, channels_first, get_layer

QUANTILES = (1, 5, 25, 50, 75, 95, 99)
HIST_BINS = 32
TOP_K = 10
CACHE_VERSION = "acts-v2"
GRID_SIDE = 4                      # spatial maps are mean-pooled to at most GRID_SIDE x GRID_SIDE cells


@dataclass
class NeuronActivations:
    max: np.ndarray                      # [N] spatial max (class: logit)
    mean: np.ndarray                     # [N] spatial mean (class: logit)
    top1: np.ndarray | None = None       # class neurons: [N] bool, the class is the top-1 prediction


@dataclass
class LayerActivations:
    max: np.ndarray                      # [N, C]
    mean: np.ndarray                     # [N, C]
    argmax: np.ndarray                   # [N] channel with the largest mean (top-1 class for heads)
    grid: np.ndarray | None = None       # [N, C, G] float16 maps pooled to <= 4x4 cells; None: no square map


def _encode_layer(value: LayerActivations) -> dict[str, np.ndarray]:
    arrays = {"max": value.max, "mean": value.mean, "argmax": value.argmax}
    if value.grid is not None:
        arrays["grid"] = value.grid
    return arrays


def _decode_layer(arrays) -> LayerActivations:
    return LayerActivations(arrays["max"], arrays["mean"], arrays["argmax"], arrays.get("grid"))


class ActivationCache(NpzCache[LayerActivations]):
    """Per-layer activations in memory (LRU) and, with a folder, as .npz files (audit.npzcache)."""

    def __init__(self, max_entries: int = 64, directory: str | Path | None = None):
        super().__init__(CACHE_VERSION, _encode_layer, _decode_layer, max_entries=max_entries, directory=directory)

    def clear(self) -> None:
        """Forget the in-memory entries and the hit counts (the files stay)."""
        super().clear()
        self.hits = self.misses = 0


_CACHE = ActivationCache(directory=os.environ.get("NEURON_AUDIT_ACTIVATION_CACHE") or None)


def activation_cache() -> ActivationCache:
    return _CACHE


def set_cache_dir(directory: str | Path | None) -> None:
    """Also keep activations on disk under `directory` (None: memory only)."""
    _CACHE.directory = Path(directory) if directory else None


def _reduce(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(spatial max [B, C], spatial mean [B, C], map pooled to <= GRID_SIDE^2 cells [B, C, G] or None)."""
    cf = channels_first(t.detach()).float()           # [B, C, N]
    return cf.amax(dim=2), cf.mean(dim=2), _grid(cf)


def _grid(cf: torch.Tensor) -> torch.Tensor | None:
    """Each channel's map, mean-pooled to at most GRID_SIDE x GRID_SIDE cells, when its N positions form a
    square (conv maps of square probes; token grids without extra tokens); None otherwise."""
    b, c, n = cf.shape
    side = int(round(n ** 0.5))
    if n < 4 or side * side != n:
        return None
    cells = min(GRID_SIDE, side)
    pooled = torch.nn.functional.adaptive_avg_pool2d(cf.reshape(b, c, side, side), cells)
    return pooled.reshape(b, c, cells * cells)


@torch.no_grad()
def _compute_layers(model: nn.Module, probe: ProbeSet, layers: list[str], batch_size: int) -> dict[str, LayerActivations]:
    for name in layers:
        get_layer(model, name)                        # unknown layer: a clear error before any work
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    maxes: dict[str, list] = {l: [] for l in layers}
    means: dict[str, list] = {l: [] for l in layers}
    grids: dict[str, list] = {l: [] for l in layers}
    was_training = model.training
    model.eval()
    try:
        with capture(model, layers, detach=True) as acts:
            for i in range(0, len(probe.images), batch_size):
                x = probe.images[i:i + batch_size].to(device=device, dtype=dtype)
                model(fast_layout(x))
                for l in layers:
                    mx, mn, gr = _reduce(acts[l])
                    maxes[l].append(mx.cpu().numpy())
                    means[l].append(mn.cpu().numpy())
                    if gr is not None:
                        grids[l].append(gr.cpu().numpy().astype(np.float16))
                acts.clear()
    finally:
        model.train(was_training)
    out = {}
    for l in layers:
        mx = np.concatenate(maxes[l]).astype(np.float32)
        mn = np.concatenate(means[l]).astype(np.float32)
        grid = np.concatenate(grids[l]) if len(grids[l]) == len(maxes[l]) and grids[l] else None
        out[l] = LayerActivations(mx, mn, mn.argmax(axis=1).astype(np.int64), grid)
    return out


def layer_activations_full(model: nn.Module, probe: ProbeSet, layers: list[str], batch_size: int = 32,
                           use_cache: bool = True, weights_key: str | None = None) -> dict[str, LayerActivations]:
    """Per-layer activations (all channels) of `layers`, from the cache where possible;
    the missing layers are computed together in one pass over the probe set.
    `weights_key`: the model's content key (`audit.contentkeys.model_content_key`) when the caller
    knows it (the flows build it with the config's architecture and `model_args`); computed from
    the model otherwise."""
    layers = list(dict.fromkeys(layers))
    out: dict[str, LayerActivations] = {}
    todo = layers
    if use_cache:
        wkey = weights_key or model_content_key(model)
        keys = {l: (STATS_VERSION, wkey, probe.sha256, l) for l in layers}
        todo = []
        for l in layers:
            hit = _CACHE.get(keys[l])
            if hit is None:
                todo.append(l)
            else:
                out[l] = hit
    if todo:
        computed = _compute_layers(model, probe, todo, batch_size)
        for l, v in computed.items():
            out[l] = v
            if use_cache:
                _CACHE.put(keys[l], v)
    return out


def neuron_activations(model: nn.Module, probe: ProbeSet, targets: list[NeuronTarget], batch_size: int = 32,
                       use_cache: bool = True, weights_key: str | None = None) -> dict[str, NeuronActivations]:
    """neuron_id -> NeuronActivations(max[N], mean[N]) in one pass over the probe set."""
    layers = list(dict.fromkeys(t.layer for t in targets))
    full = layer_activations_full(model, probe, layers, batch_size, use_cache, weights_key)
    out = {}
    for t in targets:
        la = full[t.layer]
        if not 0 <= t.index < la.max.shape[1]:
            raise IndexError(f"neuron {t.neuron_id!r}: index {t.index} out of range for layer {t.layer!r} "
                             f"({la.max.shape[1]} channels)")
        if t.kind == "class":
            logit = la.mean[:, t.index].copy()
            out[t.neuron_id] = NeuronActivations(max=logit, mean=logit.copy(), top1=la.argmax == t.index)
        else:
            out[t.neuron_id] = NeuronActivations(max=la.max[:, t.index].copy(), mean=la.mean[:, t.index].copy())
    return out


def layer_activations(model: nn.Module, probe: ProbeSet, layer: str, batch_size: int = 32,
                      use_cache: bool = True, weights_key: str | None = None) -> np.ndarray:
    """[N, C] spatial-max pooled activations of every channel of `layer` (for identity matching)."""
    return layer_activations_full(model, probe, [layer], batch_size, use_cache, weights_key)[layer].max


def summarize(neuron_id: str, values, top1: np.ndarray | None = None, k: int = TOP_K,
              bins: int = HIST_BINS) -> ActivationStats:
    """Summary statistics of one neuron's values on the probe set.

    `values` is an array [N] or a NeuronActivations (its `max`; its `top1` when present).
    frac_active: for inner neurons the fraction of probe images where the value is > 0
    (post-activation channels) ; for class neurons, when `top1` is known, the fraction of
    probe images where the class is the top-1 prediction (a logit's sign means nothing),
    otherwise the fraction with a positive logit.
    The histogram has `bins` equal-width bins between the minimum and the maximum.
    """
    if isinstance(values, NeuronActivations):
        top1 = values.top1 if top1 is None else top1
        values = values.max
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    order = np.argsort(-v, kind="stable")[:min(k, v.size)]
    frac = float(np.mean(top1)) if top1 is not None else float(np.mean(v > 0))
    return ActivationStats(
        neuron_id=neuron_id, n=int(v.size), mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
        quantiles={f"q{q:02d}": float(np.percentile(v, q)) for q in QUANTILES},
        frac_active=frac, hist_edges=[float(e) for e in edges], hist_counts=[int(c) for c in counts],
        topk_indices=[int(i) for i in order], topk_values=[float(v[i]) for i in order])
