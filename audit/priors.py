"""Image priors of VITAL, one value per batch element.

Same definitions as the authors' code (four neighbour differences: horizontal,
vertical and both diagonals), but reduced per image instead of over the batch, so
that neurons optimized together do not share a loss.
"""
from __future__ import annotations

import torch

__all__ = ["total_variation_l1", "total_variation_l2", "l2_prior"]


def _diffs(x: torch.Tensor) -> list[torch.Tensor]:
    return [
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    ]


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    """Sum over the four directions of the mean absolute neighbour difference: [B]."""
    return sum(d.abs().flatten(1).mean(1) for d in _diffs(x))


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """Sum over the four directions of the L2 norm of the neighbour differences: [B]."""
    return sum(d.flatten(1).norm(dim=1) for d in _diffs(x))


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each image: [B]."""
    return x.flatten(1).norm(dim=1)
