"""A production batch: its images as the model sees them, and the neurons' values on them.

Production images are whole photographs: each is resized on its shorter side and centre-cropped
to the probe resolution, the models' own preprocessing (`audit.probe.build_probe_set` with one
crop per image). Unreadable and non-RGB files are skipped with a reason; fewer than
`min_images` usable images is bad input.

`batch_features` computes, in the same forward pass, the neurons' values and the spatial mean of
every channel of the whole-layer test's layers (`tested_layers`: the earliest feature stage, each
layer an inner neuron taps, and the model's final feature layer, whose spatial mean is the pooled
embedding).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..errors import AuditInputError
from ..probe import ProbeSet, build_probe_set
from ..records import NeuronTarget
from ..stats import layer_activations_full, neuron_activations
from ..taps import default_taps, final_feature_layer


def load_batch(folder: str | Path, size: int, min_images: int) -> ProbeSet:
    """The batch's usable images as a ProbeSet (names: file stems; `skipped`: path -> reason;
    `sha256`: file bytes and preprocessing)."""
    path = Path(folder)
    if not path.is_dir():
        raise AuditInputError(f"--images: {str(path)!r} is not a folder of images")
    batch = build_probe_set(str(path), size=size, crops_per_image=1, min_images=min_images)
    batch.names = [n.split("#", 1)[0] for n in batch.names]
    return batch


def neuron_values(model: nn.Module, images: ProbeSet, targets: list[NeuronTarget], use_cache: bool = True,
                  weights_key: str | None = None, batch_size: int = 32) -> np.ndarray:
    """[n, p] values of `targets` on `images` (class: logit; inner: spatial max), one column per target."""
    acts = neuron_activations(model, images, targets, batch_size=batch_size, use_cache=use_cache,
                              weights_key=weights_key)
    return np.stack([acts[t.neuron_id].max for t in targets], axis=1).astype(np.float64)


def tested_layers(model: nn.Module, targets: list[NeuronTarget]) -> list[str]:
    """The whole-layer test's layers: the model's earliest feature stage (colour and fine detail, where
    broken preprocessing shows first: an R/B swap moves little beyond it), each layer an inner neuron
    taps, then the final feature layer (its spatial mean is the pooled embedding)."""
    try:
        early = default_taps(model)[:1]
    except AuditInputError:
        early = []
    layers = early + [t.layer for t in targets if t.kind != "class"]
    final = final_feature_layer(model)
    if final is not None:
        layers.append(final)
    return list(dict.fromkeys(layers))


def batch_features(model: nn.Module, images: ProbeSet, targets: list[NeuronTarget], layers: list[str],
                   batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """([n, p] neuron values as `neuron_values`, {layer: [n, C] spatial mean of every channel}) in one
    forward pass, not cached (a batch is seen once; the reference is cached by `refcache`)."""
    wanted = list(dict.fromkeys([t.layer for t in targets] + list(layers)))
    acts = layer_activations_full(model, images, wanted, batch_size=batch_size, use_cache=False)
    cols = []
    for t in targets:
        la = acts[t.layer]
        if not 0 <= t.index < la.max.shape[1]:
            raise IndexError(f"neuron {t.neuron_id!r}: index {t.index} out of range for layer {t.layer!r} "
                             f"({la.max.shape[1]} channels)")
        cols.append(la.mean[:, t.index] if t.kind == "class" else la.max[:, t.index])
    return (np.stack(cols, axis=1).astype(np.float64),
            {layer: acts[layer].mean.astype(np.float32) for layer in layers})
