"""DeepInversion: the target plus a batch-norm statistics prior, no references (baseline).

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020
(NVlabs/DeepInversion, imagenet_inversion.py / deepinversion.py, read to learn). The image is
optimized in ImageNet-normalized pixel space from Gaussian noise so that

* the target is reached: class neuron -log p(class) (their cross-entropy), inner neuron minus
  the spatial mean of channel ``index`` at ``layer``;
* every batch-norm layer sees the statistics it was trained on (their "feature distribution
  regularization"): for each `nn.BatchNorm2d`, ||mean - running_mean||_2 + ||var - running_var||_2
  of its input over the image's positions, the first layer weighted ``first_bn_multiplier`` (10),
  the sum weighted ``bn_weight`` (their r_feature 0.01);
* image priors: total variation (L1, L2; `audit.priors`, the authors' four directions) and L2 with
  their weights (tv_l2 1e-4, l2 1e-5, tv_l1 0);
* each step rolls the image by a random offset in [-jitter, jitter] (30 px at 224, scaled) and
  flips it with probability 1/2; Adam (betas 0.5, 0.9), lr 0.25, linear warm-up then cosine decay
  (`audit.optimize`); pixels clipped to the valid normalized range after each step.

The statistics are each image's own (the authors pool them over a batch of 152 images of many
classes): here every batch element is one neuron and must not share its loss with the others, so
a batch of neurons renders each as if alone. Their multi-resolution warm start and Adaptive
DeepInversion's competition term are left out. No references: the prior is the model's own
running statistics, which is why this is the baseline for "what the model alone says".

The transparency mask is the |d loss / d image| accumulated over the steps (as MACO's).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .baselines import _device, _mask
from .modelstate import frozen_on
from .models import IMAGENET_MEAN, IMAGENET_STD, to_uint8_image
from .optimize import optimize
from .priors import l2_prior, total_variation_l1, total_variation_l2
from .records import NeuronTarget, Visualization
from .taps import capture, channels_first, output_layer_name
from .transforms import Compose, Jitter, RandomFlip

__all__ = ["batchnorm_layers", "batchnorm_statistics_loss", "render_deepinversion"]

ProgressFn = Callable[[int, torch.Tensor], None]


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's 2-D batch-norm layers (timm's BatchNormAct2d included), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]


@contextmanager
def batchnorm_statistics_loss(model: nn.Module, first_multiplier: float = 10.0) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward appends to the yielded list one [B] tensor per batch-norm
    layer: ||mean - running_mean||_2 + ||var - running_var||_2 of the layer's input, per batch element
    over its positions (the first layer times `first_multiplier`). Hooks are removed on exit."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("DeepInversion needs a model with batch-norm layers (nn.BatchNorm2d); this one has none")
    terms: list[torch.Tensor] = []

    def hook(weight: float):
        def fn(module: nn.BatchNorm2d, inputs, _out):
            x = inputs[0].float()
            mean = x.mean((2, 3))
            var = x.var((2, 3), unbiased=False)
            terms.append(weight * ((mean - module.running_mean.float()).norm(dim=1)
                                   + (var - module.running_var.float()).norm(dim=1)))
        return fn

    handles = [m.register_forward_hook(hook(first_multiplier if k == 0 else 1.0)) for k, m in enumerate(layers)]
    try:
        yield terms
    finally:
        for h in handles:
            h.remove()


def _target_objective(logits: torch.Tensor, acts, targets: Sequence[NeuronTarget], head: str) -> torch.Tensor:
    """[B] what each element maximizes: log p(class) for a class neuron, its channel's spatial mean otherwise."""
    out = []
    logp = F.log_softmax(logits.float(), dim=-1)
    for j, t in enumerate(targets):
        if t.kind == "class" or t.layer == head:
            out.append(logp[j, t.index])
        else:
            out.append(channels_first(acts[t.layer][j:j + 1])[0, t.index].float().mean())
    return torch.stack(out)


def _clip_pixels(x: torch.Tensor) -> None:
    """Clamp ImageNet-normalized pixels to the normalized image of [0, 1], in place."""
    for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        x[:, c].clamp_(-m / s, (1 - m) / s)


def render_deepinversion(model: nn.Module, targets: list[NeuronTarget], size: int, steps: int = 400, seed: int = 0,
                         device: str | torch.device | None = None, progress: ProgressFn | None = None,
                         lr: float = 0.25, bn_weight: float = 0.01, first_bn_multiplier: float = 10.0,
                         tv_l1: float = 0.0, tv_l2: float = 1e-4, l2: float = 1e-5, jitter: int | None = None,
                         flip: bool = True, warmup: int | None = None) -> list[Visualization]:
    """DeepInversion visualization of each target (one batch element each), with a transparency mask.

    Seeded by explicit generators (noise start from `seed`, jitter and flips from seed + 1): the same
    seed on the same machine gives the same bytes. The model is left where, and as, it was."""
    if not targets:
        return []
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    dev = _device(model, device)
    t0 = time.perf_counter()
    b = len(targets)
    jitter = round(30 * size / 224) if jitter is None else int(jitter)
    warmup = max(1, round(0.05 * steps)) if warmup is None else int(warmup)
    noise = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x = noise.to(dev).requires_grad_(True)
    g = torch.Generator().manual_seed(seed + 1)
    augment = Compose([Jitter(jitter, generator=g)] + ([RandomFlip(0.5, generator=g)] if flip else []))
    acc = torch.zeros(b, size, size, device=dev)
    with frozen_on(model, dev):
        head = output_layer_name(model)
        inner = sorted({t.layer for t in targets if t.kind != "class" and t.layer != head})

        def loss(_step: int) -> torch.Tensor:
            xj = augment(x)
            with batchnorm_statistics_loss(model, first_bn_multiplier) as bn, capture(model, inner) as acts:
                logits = model(xj)
            total = -_target_objective(logits, acts, targets, head) + bn_weight * torch.stack(bn).sum(0)
            if tv_l1:
                total = total + tv_l1 * total_variation_l1(xj)
            if tv_l2:
                total = total + tv_l2 * total_variation_l2(xj)
            if l2:
                total = total + l2 * l2_prior(xj)
            return total

        def accumulate(_step: int) -> None:
            if x.grad is not None:
                acc.add_(x.grad.detach().abs().sum(1))

        def post_step() -> None:
            _clip_pixels(x.data)

        hist = optimize(x, loss, steps=steps, lr=lr, warmup=warmup, progress=progress, betas=(0.5, 0.9),
                        post_step=post_step, after_backward=accumulate)
    seconds = time.perf_counter() - t0
    settings = {"method": "deepinversion", "resolution": size, "steps": steps, "lr": lr, "optimizer": "adam",
                "betas": [0.5, 0.9], "warmup": warmup, "bn_weight": bn_weight,
                "first_bn_multiplier": first_bn_multiplier, "tv_l1": tv_l1, "tv_l2": tv_l2, "l2": l2,
                "jitter": jitter, "flip": flip, "device": str(dev), "batch": b}
    return [Visualization(neuron_id=t.neuron_id, method="deepinversion", seed=seed, image=to_uint8_image(x[i]),
                          mask=_mask(acc[i]), loss_history=hist.element(i),
                          settings={**settings, "layer": t.layer, "index": t.index, "kind": t.kind},
                          seconds=seconds)
            for i, t in enumerate(targets)]
