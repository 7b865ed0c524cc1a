"""A generic optimization loop for feature visualization (in the style of Captum's optim).

`optimize` minimizes ``loss_fn(step).sum()`` where ``loss_fn`` returns one loss per
batch element (elements are independent, so each gets its own gradient), with Adam,
a linear warm-up and a cosine decay of the learning rate, optional post-step
projection (e.g. clipping pixels) and pluggable stop criteria.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["History", "MaxSteps", "LossPlateau", "lr_at", "optimize"]


@dataclass
class History:
    losses: list[list[float]] = field(default_factory=list)    # [step][batch element]
    lrs: list[float] = field(default_factory=list)
    steps_run: int = 0
    stopped_by: str | None = None
    seconds: float = 0.0

    def element(self, b: int) -> list[float]:
        return [row[b] for row in self.losses]


class MaxSteps:
    """Stop after n steps."""

    def __init__(self, n: int):
        self.n = int(n)

    def __call__(self, history: History) -> bool:
        return history.steps_run >= self.n


class LossPlateau:
    """Stop when, for every batch element, the mean loss of the last `window` steps improved by
    less than `rel_tol` (relative) on the mean of the `window` steps before, after `min_steps`."""

    def __init__(self, window: int = 50, rel_tol: float = 1e-3, min_steps: int = 100):
        self.window, self.rel_tol, self.min_steps = int(window), float(rel_tol), int(min_steps)

    def __call__(self, history: History) -> bool:
        n = history.steps_run
        if n < max(self.min_steps, 2 * self.window):
            return False
        rows = torch.tensor(history.losses[-2 * self.window:], dtype=torch.float64)
        before, after = rows[: self.window].mean(0), rows[self.window:].mean(0)
        return bool(((before - after) <= self.rel_tol * before.abs().clamp_min(1e-12)).all())


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * lr


def optimize(image_param: torch.Tensor | Sequence[torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int,
             lr: float, warmup: int = 0, stop_criteria: Iterable[Callable[[History], bool]] = (),
             progress: Callable[[int, torch.Tensor], None] | None = None, betas: tuple[float, float] = (0.5, 0.9),
             post_step: Callable[[], None] | None = None,
             after_backward: Callable[[int], None] | None = None) -> History:
    """Run Adam on `image_param` for at most `steps` steps; returns the loss history.

    loss_fn(step) -> Tensor[B] (per batch element); progress(step, losses) is called each step;
    post_step() runs after each optimizer step (e.g. clipping under no_grad); after_backward(step)
    runs between backward and step (e.g. to accumulate gradients for a mask).
    """
    params = [image_param] if isinstance(image_param, torch.Tensor) else list(image_param)
    opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)
    criteria = [MaxSteps(steps), *stop_criteria]
    hist = History()
    t0 = time.perf_counter()
    for step in range(steps):
        cur = lr_at(step, steps, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        losses = loss_fn(step)
        if losses.dim() != 1:
            raise ValueError(f"loss_fn must return one loss per batch element [B], got {tuple(losses.shape)}")
        losses.sum().backward()
        if after_backward is not None:
            after_backward(step)
        opt.step()
        if post_step is not None:
            with torch.no_grad():
                post_step()
        hist.losses.append(losses.detach().double().cpu().tolist())
        hist.lrs.append(cur)
        hist.steps_run = step + 1
        if progress is not None:
            progress(step, losses.detach())
        for crit in criteria:
            if crit(hist):
                hist.stopped_by = type(crit).__name__
                break
        if hist.stopped_by is not None:
            break
    hist.seconds = time.perf_counter() - t0
    return hist
