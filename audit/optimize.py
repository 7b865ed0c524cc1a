"""A generic optimization loop for feature visualization (in the style of Captum's optim).

`optimize` minimizes ``loss_fn(step).sum()`` where ``loss_fn`` returns one loss per
batch element (elements are independent, so each gets its own gradient), with Adam,
a linear warm-up and a cosine decay of the learning rate, optional post-step
projection (e.g. clipping pixels) and pluggable stop criteria.

Stopping is per element: a criterion that says which elements have converged
(`LossPlateau.converged`) freezes those elements (their gradient is zeroed and their
values are put back after every later step, so Adam's momentum cannot move them), and
the loop ends when every element has stopped. An element therefore ends where it would
have ended alone: batching several neurons changes nothing but speed.
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
    stopped_at: list[int | None] = field(default_factory=list)  # per element: steps it ran before it converged
    seconds: float = 0.0

    def element(self, b: int) -> list[float]:
        """Loss of element b at each step it ran (up to its own stop)."""
        n = self.stopped_at[b] if b < len(self.stopped_at) and self.stopped_at[b] is not None else len(self.losses)
        return [row[b] for row in self.losses[:n]]

    def steps_of(self, b: int) -> int:
        return len(self.element(b))


class MaxSteps:
    """Stop after n steps."""

    def __init__(self, n: int):
        self.n = int(n)

    def __call__(self, history: History) -> bool:
        return history.steps_run >= self.n


class LossPlateau:
    """An element has converged when the mean of its last `window` losses improved by less than
    `rel_tol` (relative) on the mean of the `window` losses before, after `min_steps` steps."""

    def __init__(self, window: int = 50, rel_tol: float = 1e-3, min_steps: int = 100):
        self.window, self.rel_tol, self.min_steps = int(window), float(rel_tol), int(min_steps)

    def converged(self, history: History) -> list[bool]:
        """Per element: has it reached a plateau at the latest step?"""
        n = history.steps_run
        width = len(history.losses[-1]) if history.losses else 0
        if n < max(self.min_steps, 2 * self.window):
            return [False] * width
        rows = torch.tensor(history.losses[-2 * self.window:], dtype=torch.float64)
        before, after = rows[: self.window].mean(0), rows[self.window:].mean(0)
        return ((before - after) <= self.rel_tol * before.abs().clamp_min(1e-12)).tolist()

    def __call__(self, history: History) -> bool:
        return all(self.converged(history))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps` (the authors' policy)."""
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
    runs between backward and step (e.g. to accumulate gradients for a mask). Criteria with a
    `converged(history) -> list[bool]` method stop elements one by one (frozen, see the module
    docstring) when `image_param` is one tensor whose first dimension is the batch; other criteria
    stop the whole run.
    """
    params = [image_param] if isinstance(image_param, torch.Tensor) else list(image_param)
    per_element = isinstance(image_param, torch.Tensor) and image_param.dim() >= 1
    opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)
    criteria = [MaxSteps(steps), *stop_criteria]
    hist = History()
    frozen: dict[int, torch.Tensor] = {}
    t0 = time.perf_counter()
    for step in range(steps):
        cur = lr_at(step, steps, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        losses = loss_fn(step)
        if losses.dim() != 1:
            raise ValueError(f"loss_fn must return one loss per batch element [B], got {tuple(losses.shape)}")
        if not hist.stopped_at:
            hist.stopped_at = [None] * losses.shape[0]
        losses.sum().backward()
        if frozen and image_param.grad is not None:
            image_param.grad[list(frozen)] = 0
        if after_backward is not None:
            after_backward(step)
        opt.step()
        with torch.no_grad():
            for b, value in frozen.items():
                image_param.data[b] = value
            if post_step is not None:
                post_step()
        hist.losses.append(losses.detach().double().cpu().tolist())
        hist.lrs.append(cur)
        hist.steps_run = step + 1
        if progress is not None:
            progress(step, losses.detach())
        for crit in criteria:
            converged = getattr(crit, "converged", None)
            if converged is not None and per_element:
                for b, done in enumerate(converged(hist)):
                    if done and b not in frozen:
                        frozen[b] = image_param.data[b].clone()
                        hist.stopped_at[b] = step + 1
                if len(frozen) == len(hist.stopped_at):
                    hist.stopped_by = type(crit).__name__
            elif crit(hist):
                hist.stopped_by = type(crit).__name__
            if hist.stopped_by is not None:
                break
        if hist.stopped_by is not None:
            break
    hist.seconds = time.perf_counter() - t0
    return hist
