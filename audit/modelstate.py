"""The caller's model, borrowed and given back as it was.

Every renderer needs the same thing from the model it is handed: on the device of the run, in eval
mode, its parameters frozen (gradients flow to the image only), and afterwards device, train/eval
mode and each parameter's `requires_grad` exactly as the caller had them, whatever happened inside.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def frozen_on(model: nn.Module, device: str | torch.device | None = None) -> Iterator[torch.device]:
    """Model on `device` (default: where it is; moved only when elsewhere), eval mode, parameters
    frozen; yields the device. Device, mode and every `requires_grad` flag are restored on exit."""
    first = next(model.parameters())
    old_device, was_training = first.device, model.training
    dev = torch.device(device) if device is not None else old_device
    flags = [p.requires_grad for p in model.parameters()]
    try:
        if dev != old_device:
            model.to(dev)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield dev
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        if dev != old_device:
            model.to(old_device)
        model.train(was_training)
