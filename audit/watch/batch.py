"""A production batch: its images as the model sees them, and the neurons' values on them.

Production images are whole photographs: each is resized on its shorter side and centre-cropped
to the probe resolution, the models' own preprocessing (`audit.probe.build_probe_set` with one
crop per image). Unreadable and non-RGB files are skipped with a reason; fewer than
`min_images` usable images is bad input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..errors import AuditInputError
from ..probe import ProbeSet, build_probe_set
from ..records import NeuronTarget
from ..stats import neuron_activations


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
