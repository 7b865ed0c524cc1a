"""Random augmentations applied to the synthetic image at every optimization step.

Each transform draws from its own `torch.Generator`, so a run is reproducible from
its seed and independent of global RNG state. Offsets and flips are drawn per batch
element (several neurons optimized together each get their own augmentation).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Jitter", "RandomFlip", "Compose"]


def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(seed)


class Jitter(nn.Module):
    """Cyclic shift (`torch.roll`) by a random offset in [-pixels, pixels] along H and W."""

    def __init__(self, pixels: int, generator: torch.Generator | None = None, seed: int = 0):
        super().__init__()
        self.pixels = int(pixels)
        self.generator = _generator(generator, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixels <= 0:
            return x
        shifts = torch.randint(-self.pixels, self.pixels + 1, (x.shape[0], 2), generator=self.generator).tolist()
        if all(s == shifts[0] for s in shifts):
            return torch.roll(x, shifts=tuple(shifts[0]), dims=(-2, -1))
        return torch.cat([torch.roll(x[i:i + 1], shifts=tuple(s), dims=(-2, -1)) for i, s in enumerate(shifts)])


class RandomFlip(nn.Module):
    """Horizontal flip with probability p, drawn per batch element."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None, seed: int = 0):
        super().__init__()
        self.p = float(p)
        self.generator = _generator(generator, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(x.shape[0], generator=self.generator) < self.p).tolist()
        if not any(flip):
            return x
        if all(flip):
            return torch.flip(x, dims=(-1,))
        return torch.cat([torch.flip(x[i:i + 1], dims=(-1,)) if f else x[i:i + 1] for i, f in enumerate(flip)])


class Compose(nn.Module):
    """Apply transforms in order."""

    def __init__(self, transforms: list[nn.Module]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x
