"""Baseline feature visualizations, for comparison with VITAL.

* ``render_fourier``: activation maximization in a Fourier / decorrelated-colour
  parametrization (Olah, Mordvintsev, Schubert, Distill 2017; the Lucid/Lucent recipe):
  the image is a real FFT spectrum scaled by 1/f (`fourier_scale`), inverse-transformed
  (orthonormal irfft2, divided by 4 as in Lucid), its colours recorrelated with Lucid's
  ImageNet colour-correlation square-root matrix (`COLOR_CORRELATION_SQRT`, normalized by
  its largest column norm), squashed by a sigmoid into [0, 1] RGB and ImageNet-normalized.
  Every step applies Lucid's ``standard_transforms`` (pad 12 with grey, jitter 8, random
  scale 0.9-1.1, rotation -10..10 degrees, jitter 4; pixel sizes scaled by size/224).
  Adam, constant lr 0.05 (Lucid's default). Objective: the target logit (class neuron) or
  the spatial mean of channel ``index`` at ``layer`` (inner neuron), maximized.

* ``render_maco``: magnitude-constrained optimization (Fel et al., NeurIPS 2023,
  "Unlocking feature visualization for deeper networks with MAgnitude Constrained
  Optimization"; the authors' PyTorch code is `horama`). The Fourier magnitude is fixed to
  the mean amplitude spectrum of natural images (here: the given reference images, in the
  decorrelated colour space, as the authors' ImageNet spectrum is) and only the phase is
  optimized. The phase parameter is made antisymmetric (phi(-k) = -phi(k)) so that the
  spectrum is Hermitian and the spatial image has *exactly* the fixed magnitude (up to
  float rounding; `maco_spatial`), then the image is standardized, colours recorrelated,
  sigmoid to [0, 1], ImageNet-normalized. Each step classifies several random crops
  (relative side in ``box_size``, centre 0.5 + N(0, 0.15)) resized to ``size`` with
  Gaussian + uniform noise; Adam, lr 0.25 on the phase parameter (horama: NAdam lr 1.0 over
  1000 steps; at 256 steps 0.25 reached higher logits than 1.0 or 0.05 in a check at 128 px).
  The transparency mask is the |d objective / d image| accumulated over the steps
  (summed over colour channels, clipped at its 98th percentile, scaled to [0, 1]).

Both render several targets as one batch (each batch element has its own target and
loss; augmentation draws are shared per step, which couples nothing since each element's
loss depends only on its own image). Seeded by explicit `torch.Generator`s: the same seed
on the same machine gives the same bytes. They run on the model's own device (or ``device``,
the model then moved there for the call and back).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modelstate import frozen_on
from .models import denormalize, normalize
from .records import NeuronTarget, Visualization
from .taps import capture, channels_first, get_layer, output_layer_name

__all__ = ["COLOR_CORRELATION_SQRT", "color_matrix", "recorrelate_colors", "decorrelate_colors",
           "fourier_scale", "fourier_rgb", "FourierTransforms", "render_fourier",
           "reference_magnitude", "maco_spatial", "maco_rgb", "render_maco", "neuron_objectives"]

# Lucid's `color_correlation_svd_sqrt` (square root of the ImageNet colour covariance, from its SVD).
COLOR_CORRELATION_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                     [0.27, 0.00, -0.05],
                                     [0.27, -0.09, 0.03]], dtype=np.float32)

ProgressFn = Callable[[int, torch.Tensor], None]


def color_matrix(device: torch.device | str | None = None) -> torch.Tensor:
    """Lucid's colour matrix divided by its largest column norm: rgb = M @ t per pixel."""
    m = COLOR_CORRELATION_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SQRT, axis=0))
    return torch.as_tensor(m, dtype=torch.float32, device=device)


def recorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """Decorrelated space -> (pre-sigmoid) RGB: [B, 3, H, W], each pixel multiplied by `color_matrix`."""
    return torch.einsum("ij,bjhw->bihw", color_matrix(t.device).to(t.dtype), t)


def decorrelate_colors(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of `recorrelate_colors`."""
    inv = torch.linalg.inv(color_matrix(rgb.device).double()).to(rgb.dtype)
    return torch.einsum("ij,bjhw->bihw", inv, rgb)


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where a render runs: `device` when given, else the model's own device."""
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _StopForward(Exception):
    pass


def neuron_objectives(model: nn.Module, x: torch.Tensor, targets: Sequence[NeuronTarget],
                      owner: Sequence[int] | None = None) -> torch.Tensor:
    """The objective of each batch element of `x` for its target: Tensor[len(x)].

    `owner[j]` is the index into `targets` of the target of element j (default: j). Class
    neuron: its logit; inner neuron: the spatial (token) mean of channel `index` at `layer`.
    The forward stops after the last needed layer when no class neuron is involved.
    """
    owner = list(range(len(targets))) if owner is None else list(owner)
    if len(owner) != x.shape[0]:
        raise ValueError(f"{len(owner)} owners for a batch of {x.shape[0]}")
    head = output_layer_name(model)
    inner = sorted({t.layer for t in targets if t.kind != "class" and t.layer != head})
    need_logits = any(t.kind == "class" or t.layer == head for t in targets)
    seen: set[str] = set()

    def stopper(name: str):
        def hook(_m, _i, _o):
            seen.add(name)
            if len(seen) == len(inner):
                raise _StopForward
        return hook

    logits = None
    with capture(model, inner) as acts:
        handles = []
        try:
            # registered after capture's hooks, so the last needed layer is recorded before stopping
            if inner and not need_logits:
                for n in inner:
                    handles.append(get_layer(model, n).register_forward_hook(stopper(n)))
            logits = model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
    out = []
    for j, o in enumerate(owner):
        t = targets[o]
        if t.kind == "class" or t.layer == head:
            out.append(logits[j, t.index])
        else:
            a = channels_first(acts[t.layer][j:j + 1])
            out.append(a[0, t.index].float().mean())
    return torch.stack(out)


def _mask(acc: torch.Tensor) -> np.ndarray:
    m = acc.detach().float().cpu()
    hi = float(torch.quantile(m.flatten(), 0.98)) if m.numel() else 1.0
    return (m.clamp(max=hi) / max(hi, 1e-30)).numpy().astype(np.float32)


def _uint8(rgb: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return (rgb.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- Fourier (Lucid)

def fourier_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """Lucid's 1/f scaling of the rfft2 coefficients: [h, w//2+1]."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / torch.clamp(freqs, min=1.0 / max(w, h)) ** decay_power).float()


def fourier_rgb(spectrum: torch.Tensor, size: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Lucid's image: spectrum [B, 3, size, size//2+1, 2] (real, imag) -> RGB in [0, 1] [B, 3, size, size].

    sigmoid(recorrelate(irfft2(scale * spectrum, ortho) / 4)).
    """
    if scale is None:
        scale = fourier_scale(size, size)
    scaled = torch.view_as_complex(spectrum.contiguous()) * scale.to(spectrum.device)
    img = torch.fft.irfft2(scaled, s=(size, size), norm="ortho") / 4.0
    return torch.sigmoid(recorrelate_colors(img))


class FourierTransforms:
    """Lucid's `standard_transforms` on [0, 1] RGB: pad (grey), jitter, scale, rotate, jitter.

    Pixel sizes are Lucid's (12, 8, 4 at 224 px) scaled by size/224; draws from `generator`.
    """

    def __init__(self, size: int, generator: torch.Generator):
        f = size / 224
        self.pad = max(1, round(12 * f))
        self.jitter1 = max(1, round(8 * f))
        self.jitter2 = max(1, round(4 * f))
        self.scales = [1 + (i - 5) / 50.0 for i in range(11)]
        self.angles = list(range(-10, 11)) + 5 * [0]
        self.g = generator

    def _choice(self, options: list) -> float:
        return options[int(torch.randint(len(options), (1,), generator=self.g))]

    def _jitter(self, x: torch.Tensor, d: int) -> torch.Tensor:
        dx, dy = (int(v) for v in torch.randint(d, (2,), generator=self.g))
        h, w = x.shape[-2:]
        return x[..., dy:dy + h - d, dx:dx + w - d]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [self.pad] * 4, mode="constant", value=0.5)
        x = self._jitter(x, self.jitter1)
        s = self._choice(self.scales)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear", align_corners=False)
        a = math.radians(self._choice(self.angles))
        if a:
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                                 dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._jitter(x, self.jitter2)


def render_fourier(model: nn.Module, targets: list[NeuronTarget], size: int, steps: int = 512, seed: int = 0,
                   device: str | torch.device | None = None, progress: ProgressFn | None = None,
                   lr: float = 0.05, decay_power: float = 1.0, init_sd: float = 0.01) -> list[Visualization]:
    """Fourier/decorrelated activation maximization of each target (one batch element each)."""
    if not targets:
        return []
    dev = _device(model, device)
    t0 = time.perf_counter()
    b = len(targets)
    g_init = torch.Generator().manual_seed(seed)
    g_aug = torch.Generator().manual_seed(seed + 1)
    fh, fw = size, size // 2 + 1
    spectrum = (torch.randn(b, 3, fh, fw, 2, generator=g_init) * init_sd).to(dev).requires_grad_(True)
    scale = fourier_scale(size, size, decay_power).to(dev)
    aug = FourierTransforms(size, g_aug)
    history: list[list[float]] = []
    with frozen_on(model, dev):
        opt = torch.optim.Adam([spectrum], lr=lr)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            rgb = fourier_rgb(spectrum, size, scale)
            losses = -neuron_objectives(model, normalize(aug(rgb)), targets)
            losses.sum().backward()
            opt.step()
            history.append(losses.detach().double().cpu().tolist())
            if progress is not None:
                progress(step, losses.detach())
        with torch.no_grad():
            rgb = fourier_rgb(spectrum, size, scale)
    seconds = time.perf_counter() - t0
    settings = {"method": "fourier", "resolution": size, "steps": steps, "lr": lr, "optimizer": "adam",
                "decay_power": decay_power, "init_sd": init_sd, "color_decorrelation": "lucid_svd_sqrt",
                "transforms": "pad12,jitter8,scale0.9-1.1,rotate-10..10,jitter4 (x size/224)",
                "device": str(dev), "batch": b}
    return [Visualization(neuron_id=t.neuron_id, method="fourier", seed=seed, image=_uint8(rgb[i]), mask=None,
                          loss_history=[row[i] for row in history],
                          settings={**settings, "layer": t.layer, "index": t.index, "kind": t.kind},
                          seconds=seconds)
            for i, t in enumerate(targets)]


# --------------------------------------------------------------------------- MACO

def _flip_index(n: int, device: torch.device | None = None) -> torch.Tensor:
    return (-torch.arange(n, device=device)) % n


def reference_magnitude(reference_images: torch.Tensor, size: int) -> torch.Tensor:
    """Mean amplitude spectrum of the references (ImageNet-normalized [R, 3, S, S]) in Lucid's
    decorrelated colour space, resized to `size`, symmetrized (|X(-k)| = |X(k)|): [3, size, size]."""
    refs = reference_images.detach().float()
    if refs.shape[-1] != size or refs.shape[-2] != size:
        refs = F.interpolate(refs, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    t = decorrelate_colors(denormalize(refs).clamp(0, 1))
    mag = torch.fft.fft2(t.double()).abs().mean(0)
    fi = _flip_index(size, mag.device)
    mag = 0.5 * (mag + mag[:, fi][:, :, fi])
    return mag.float()


def _antisymmetric(phase: torch.Tensor) -> torch.Tensor:
    h, w = phase.shape[-2:]
    fh, fw = _flip_index(h, phase.device), _flip_index(w, phase.device)
    return 0.5 * (phase - phase[..., fh, :][..., fw])


def maco_spatial(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """The spatial image [B, 3, H, W] whose spectrum is magnitude * exp(i phi) exactly.

    magnitude: [3, H, W] or [B, 3, H, W] (symmetric); phase: the free parameter [B, 3, H, W]. phi is the
    antisymmetric part of the parameter, standardized per image (horama standardizes the
    phase), so the spectrum is Hermitian and |fft2(image)| == magnitude.
    """
    phi = _antisymmetric(phase)
    phi = phi / (phi.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-4)
    w = phase.shape[-1]
    half = torch.polar(magnitude[..., : w // 2 + 1].expand_as(phi[..., : w // 2 + 1]).contiguous(),
                       phi[..., : w // 2 + 1].contiguous())
    return torch.fft.irfft2(half, s=phase.shape[-2:])


def maco_rgb(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """MACO image in [0, 1] RGB: sigmoid(recorrelate(standardize(maco_spatial)))."""
    x = maco_spatial(magnitude, phase)
    flat = x.flatten(1)
    x = (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-4)
    return torch.sigmoid(recorrelate_colors(x))


def _crop_boxes(b: int, n_crops: int, size: int, box_size: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """roi_align boxes [b*n_crops, 5]: (batch index, x0, y0, x1, y1) in pixels, inside the image."""
    n = b * n_crops
    side = box_size[0] + torch.rand(n, generator=g, dtype=torch.float64) * (box_size[1] - box_size[0])
    cx = 0.5 + torch.randn(n, generator=g, dtype=torch.float64) * 0.15
    cy = 0.5 + torch.randn(n, generator=g, dtype=torch.float64) * 0.15
    cx = torch.minimum(torch.maximum(cx, side / 2), 1 - side / 2)
    cy = torch.minimum(torch.maximum(cy, side / 2), 1 - side / 2)
    owner = torch.arange(b, dtype=torch.float64).repeat_interleave(n_crops)
    return torch.stack([owner, (cx - side / 2) * size, (cy - side / 2) * size,
                        (cx + side / 2) * size, (cy + side / 2) * size], 1).float()


def render_maco(model: nn.Module, targets: list[NeuronTarget], reference_images: torch.Tensor | Sequence[torch.Tensor],
                size: int,
                steps: int = 256, seed: int = 0, device: str | torch.device | None = None,
                progress: ProgressFn | None = None, lr: float = 0.25, crops_per_step: int = 6,
                box_size: tuple[float, float] = (0.6, 0.9), noise: float = 0.05) -> list[Visualization]:
    """MACO visualization of each target (one batch element each), with a transparency mask.

    reference_images: ImageNet-normalized [R, 3, S, S] natural images whose mean amplitude
    spectrum is the fixed magnitude of every target (any S; resized to `size`), or a list with
    one such tensor per target (each target gets its own magnitude).
    """
    from torchvision.ops import roi_align

    if not targets:
        return []
    ref_list = [reference_images] if isinstance(reference_images, torch.Tensor) else list(reference_images)
    if not isinstance(reference_images, torch.Tensor) and len(ref_list) != len(targets):
        raise ValueError(f"{len(ref_list)} reference sets for {len(targets)} targets")
    for r in ref_list:
        if r.dim() != 4 or r.shape[1] != 3 or r.shape[0] < 1:
            raise ValueError(f"reference_images must be [R, 3, S, S], got {tuple(r.shape)}")
    dev = _device(model, device)
    t0 = time.perf_counter()
    b = len(targets)
    g_init = torch.Generator().manual_seed(seed)
    g_aug = torch.Generator().manual_seed(seed + 1)
    magnitude = torch.stack([reference_magnitude(r, size) for r in ref_list]).to(dev)   # [1 or B, 3, S, S]
    phase = torch.randn(b, 3, size, size, generator=g_init).to(dev).requires_grad_(True)
    acc = torch.zeros(b, size, size, device=dev)
    owner = [i for i in range(b) for _ in range(crops_per_step)]
    history: list[list[float]] = []
    with frozen_on(model, dev):
        opt = torch.optim.Adam([phase], lr=lr)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            rgb = maco_rgb(magnitude, phase)
            rgb.retain_grad()
            boxes = _crop_boxes(b, crops_per_step, size, box_size, g_aug).to(dev)
            crops = roi_align(rgb, boxes, output_size=(size, size), aligned=True)
            shape = crops.shape
            crops = normalize(crops)
            crops = crops + (torch.randn(shape, generator=g_aug) * noise).to(dev)
            crops = crops + ((torch.rand(shape, generator=g_aug) - 0.5) * noise).to(dev)
            obj = neuron_objectives(model, crops, targets, owner).view(b, crops_per_step).mean(1)
            losses = -obj
            losses.sum().backward()
            acc.add_(rgb.grad.detach().abs().sum(1))
            opt.step()
            history.append(losses.detach().double().cpu().tolist())
            if progress is not None:
                progress(step, losses.detach())
        with torch.no_grad():
            rgb = maco_rgb(magnitude, phase)
    seconds = time.perf_counter() - t0
    settings = {"method": "maco", "resolution": size, "steps": steps, "lr": lr, "optimizer": "adam",
                "crops_per_step": crops_per_step, "box_size": list(box_size), "noise": noise,
                "n_references": [int(r.shape[0]) for r in ref_list], "device": str(dev), "batch": b}
    return [Visualization(neuron_id=t.neuron_id, method="maco", seed=seed, image=_uint8(rgb[i]), mask=_mask(acc[i]),
                          loss_history=[row[i] for row in history],
                          settings={**settings, "layer": t.layer, "index": t.index, "kind": t.kind},
                          seconds=seconds)
            for i, t in enumerate(targets)]
