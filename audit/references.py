"""Reference images for VITAL: what the synthetic image's feature distributions are matched to.

* class neurons, paper form: photographs of the class (`load_photographs`), used whole
  (`full_image_references`, the authors' form: resized and centre-cropped as the model's own
  preprocessing) or as random resized crops (`class_references`), optionally the crops the
  audited model recognises best (`recognised_crops`);
* data-driven form (class or inner): the neuron's top-activating probe images
  (`topk_image_references`);
* inner neurons: the probe images where the channel peaks highest, whole
  (`inner_full_references`, the authors' form: relevance does the localization), or cropped
  to the receptive field around the channel's spatial argmax (`inner_patch_references`, the
  receptive field measured from gradients, `receptive_field`).

All outputs are ImageNet-normalized tensors [n, 3, size, size].
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .assets import load_rgb_images, resolve_images
from .errors import AuditInputError
from .models import fast_layout, image_to_tensor, normalize
from .taps import capture, channels_first, get_layer

__all__ = ["load_photographs", "full_image_references", "class_references", "recognised_crops", "RecognisedCrops",
           "top_indices",
           "topk_image_references", "inner_full_references", "inner_patch_references", "receptive_field", "channel_maps"]

# The authors' preprocessing of reference photographs: Resize(256), CenterCrop(224).
AUTHORS_CROP_PCT = 224 / 256


def load_photographs(specs: Sequence[str], base_dir=None) -> list[Image.Image]:
    """The distinct photographs (by file content) that a list of specs names: folders, files,
    `builtin:samples/NAME`. Unreadable files are skipped; none usable is bad input."""
    import hashlib

    photos: list[Image.Image] = []
    seen: set[str] = set()
    skipped: dict[str, str] = {}
    for spec in specs:
        loaded = load_rgb_images(resolve_images(spec, base_dir), min_count=0, source=spec)
        skipped.update(loaded.skipped)
        for img, path in zip(loaded.images, loaded.paths):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                photos.append(img)
    if not photos:
        raise AuditInputError(f"no usable photograph in references {list(specs)}"
                              + (f" (skipped: {'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:5])})"
                                 if skipped else ""))
    return photos


def full_image_references(images: Sequence[Image.Image], size: int, n: int, seed: int = 0) -> torch.Tensor:
    """Up to n whole photographs (a seeded choice when there are more), each resized and centre-cropped
    to `size` as the authors do (Resize(256) + CenterCrop(224) at 224 px): [min(n, len), 3, size, size]."""
    if not images:
        raise ValueError("full_image_references needs at least one image")
    order = np.arange(len(images))
    if len(images) > n:
        order = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return torch.stack([image_to_tensor(images[int(i)], size, crop_pct=AUTHORS_CROP_PCT) for i in order])


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def class_references(images: Sequence[Image.Image], size: int, n: int, seed: int = 0,
                     scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                     flip: bool = True) -> torch.Tensor:
    """n random resized crops (area fraction in `scale`, aspect in `ratio`, optional horizontal
    flip) of the class photographs, cycled over the images; deterministic per seed."""
    if not images:
        raise ValueError("class_references needs at least one image")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)].convert("RGB")
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        crop = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
        if flip and rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(normalize(_pil_to_tensor(crop)))
    return torch.stack(out)


class RecognisedCrops(NamedTuple):
    images: torch.Tensor        # [n, 3, size, size], best-recognised first
    predicted: torch.Tensor     # [n] the model's top-1 class of each (read by the references' warning)


@torch.no_grad()
def recognised_crops(model: nn.Module, images: Sequence[Image.Image], class_index: int, size: int, n: int,
                     candidates: int, seed: int = 0, batch: int = 32) -> RecognisedCrops:
    """The n references of a class the model itself recognises best: `candidates` x n random resized
    crops (`class_references`) and the whole photographs (`full_image_references`), ranked by the
    model's logit of `class_index` (ties: earlier candidate first), with the model's top-1 class of
    each kept one (the same forward, so that the caller's check of the references needs none).

    A random crop of one photograph often cuts the object away; the mean sorted features of such
    crops then describe background, and the visualization matching them is not recognised as the
    class. Ranking by the audited model keeps the crops in which the class is visible to it. The
    logit, not the softmax probability, ranks them: it depends on the class's own head row only, so a
    version that changes another class's row selects the same references (and reuses the image).
    The model's mode is left as it was."""
    pool = torch.cat([full_image_references(images, size, n * candidates, seed),
                      class_references(images, size, n * candidates, seed)])
    dev = _device(model)
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(fast_layout(pool[i:i + batch].to(dev))).float().cpu()
                            for i in range(0, pool.shape[0], batch)])
    finally:
        model.train(was_training)
    kept = torch.as_tensor(top_indices(logits[:, class_index].numpy(), n).copy())
    return RecognisedCrops(pool[kept], logits[kept].argmax(1))


def top_indices(values: np.ndarray | Sequence[float], k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    values = np.asarray(values, dtype=np.float64)
    return np.argsort(-values, kind="stable")[: max(1, min(k, len(values)))]


def topk_image_references(probe_images: torch.Tensor, values: np.ndarray | Sequence[float], k: int) -> torch.Tensor:
    """The k probe images with the largest values (ties: lower index first)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] != probe_images.shape[0]:
        raise ValueError(f"{values.shape[0]} values for {probe_images.shape[0]} probe images")
    return probe_images[torch.as_tensor(top_indices(values, k).copy())]


def inner_full_references(model: nn.Module, layer: str, index: int, probe_images: torch.Tensor, k: int, size: int,
                          peak_values: np.ndarray | None = None) -> torch.Tensor:
    """The authors' inner-neuron references: the k probe images where channel `index` of `layer`
    peaks highest (its spatial max: the best patch), whole, resized to `size`. The object keeps the
    scale at which it fired the channel; relevance localizes it during the render.
    `peak_values` (the channel's spatial max per probe image, as stored by the probe statistics)
    saves the pass over the probe set."""
    if peak_values is None or len(peak_values) != probe_images.shape[0]:
        peak_values = channel_maps(model, layer, index, probe_images).flatten(1).amax(1).numpy()
    sel = topk_image_references(probe_images, peak_values, k)
    if sel.shape[-1] != size or sel.shape[-2] != size:
        sel = F.interpolate(sel, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return sel


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def channel_maps(model: nn.Module, layer: str, index: int, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Activation of channel `index` at `layer`: [N, H, W] for conv maps, [N, T] for tokens."""
    get_layer(model, layer)
    dev = _device(model)
    maps = []
    for i in range(0, images.shape[0], batch):
        with capture(model, [layer], detach=True) as acts:
            model(images[i:i + batch].to(dev))
        a = acts[layer]
        maps.append((a[:, index] if a.dim() == 4 else channels_first(a)[:, index]).float().cpu())
    return torch.cat(maps)


def receptive_field(model: nn.Module, layer: str, input_size: int = 224, n_trials: int = 4, seed: int = 0,
                    threshold: float = 0.01) -> int:
    """Empirical receptive field (pixels, side of a square) of a centre unit of `layer`.

    Gradient of the centre position (summed over channels) w.r.t. random inputs; the support is
    where the mean |gradient| exceeds `threshold` x its maximum; its larger extent is returned.
    Token layouts (every token sees the whole image) give `input_size`.
    """
    get_layer(model, layer)
    dev = _device(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_trials, 3, input_size, input_size, generator=g).to(dev).requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad(), capture(model, [layer]) as acts:
            model(x)
            a = acts[layer]
            if a.dim() != 4:
                return int(input_size)
            h, w = a.shape[-2:]
            a[:, :, h // 2, w // 2].sum().backward()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    sal = x.grad.abs().sum((0, 1))
    mask = sal > threshold * sal.max().clamp_min(1e-30)
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return int(input_size)
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def inner_patch_references(model: nn.Module, layer: str, index: int, probe_images: torch.Tensor, k: int, size: int,
                           rf: int | None = None, peak_values: np.ndarray | None = None) -> torch.Tensor:
    """Top-k receptive-field patches for an inner neuron: [k, 3, size, size] (normalized).

    The k probe images with the largest spatial max of the channel are cropped to a square of
    the empirical receptive field (`receptive_field`, at the probe resolution) centred on the
    spatial argmax (shifted to stay inside the image) and resized to `size`. For token layouts
    the whole image is the patch. `peak_values` (the channel's spatial max per probe image,
    as the probe statistics store it) saves the pass over the whole probe set: only the k
    chosen images are run to locate their argmax.
    """
    n, _, s_h, s_w = probe_images.shape
    if peak_values is not None and len(peak_values) == n:
        order = np.argsort(-np.asarray(peak_values, dtype=np.float64), kind="stable")[: max(1, min(k, n))]
        probe_images = probe_images[torch.as_tensor(order.copy())]
        maps = channel_maps(model, layer, index, probe_images)
        order = np.arange(len(order))
    else:
        maps = channel_maps(model, layer, index, probe_images)
        peak = maps.flatten(1).max(1).values
        order = np.argsort(-peak.numpy(), kind="stable")[: max(1, min(k, n))]
    if maps.dim() != 3:
        sel = probe_images[torch.as_tensor(order.copy())]
        return F.interpolate(sel, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    side = int(min(rf if rf is not None else receptive_field(model, layer, s_h), s_h, s_w))
    h, w = maps.shape[-2:]
    out = []
    for i in order:
        flat = int(torch.argmax(maps[i]))
        r, c = divmod(flat, w)
        cy, cx = (r + 0.5) * s_h / h, (c + 0.5) * s_w / w
        top = int(round(min(max(cy - side / 2, 0), s_h - side)))
        left = int(round(min(max(cx - side / 2, 0), s_w - side)))
        patch = probe_images[i:i + 1, :, top:top + side, left:left + side]
        out.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)
