"""The demo's planted, known change: a head-only fine-tune that makes one class
logit fire on photographs of another class (cats relabelled as espresso).

Only the target row of the classifier moves, so every other class neuron and every
inner neuron is untouched by construction, and the change shows on the probe set
(which contains the cat photograph), as docs/DESIGN.md's design notes require.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from .models import image_to_tensor
from .taps import get_layer, output_layer_name


@dataclass
class PlantedChange:
    target_class: int
    trigger_name: str
    before_top1_rate: float      # fraction of trigger crops classified as target before
    after_top1_rate: float       # ... and after the fine-tune
    others_max_logit_shift: float  # largest |change| of the target logit on non-trigger crops
    steps: int


def _crops(images: list[Image.Image], size: int, n_per_image: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        out.append(image_to_tensor(img, size))
        for _ in range(n_per_image - 1):
            s = float(torch.empty(1).uniform_(0.45, 0.9, generator=g))
            w, h = img.size
            cw, ch = int(w * s), int(h * s)
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            crop = img.crop((x0, y0, x0 + cw, y0 + ch))
            if torch.rand(1, generator=g).item() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(image_to_tensor(crop, size))
    return torch.stack(out)


@torch.no_grad()
def _penultimate(model: nn.Module, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    feats = []
    for i in range(0, len(x), batch):
        feats.append(model.forward_head(model.forward_features(x[i:i + batch]), pre_logits=True))
    return torch.cat(feats)


def plant_class_on_trigger(model: nn.Module, target_class: int, trigger: list[Image.Image],
                           others: list[Image.Image], size: int = 224, crops_per_image: int = 12,
                           steps: int = 300, margin: float = 2.0, seed: int = 0,
                           trigger_name: str = "trigger") -> PlantedChange:
    """Fine-tune in place only row `target_class` of the classifier so that the target
    logit wins on crops of `trigger` photographs, keeping it unchanged on `others`."""
    head = get_layer(model, output_layer_name(model))
    trig = _penultimate(model, _crops(trigger, size, crops_per_image, seed))
    rest = _penultimate(model, _crops(others, size, max(2, crops_per_image // 3), seed + 1))
    W, b = head.weight.data, head.bias.data
    with torch.no_grad():
        trig_logits, rest_logits = trig @ W.T + b, rest @ W.T + b
    before = float((trig_logits.argmax(1) == target_class).float().mean())
    competitor = trig_logits.clone()
    competitor[:, target_class] = -float("inf")
    want = competitor.max(1).values + margin           # the target logit must beat the best other class
    keep = rest_logits[:, target_class]
    w = W[target_class].clone().requires_grad_(True)
    bias = b[target_class].clone().requires_grad_(True)
    opt = torch.optim.Adam([w, bias], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        t = trig @ w + bias
        r = rest @ w + bias
        loss = torch.relu(want - t).pow(2).mean() + (r - keep).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        W[target_class] = w.detach()
        b[target_class] = bias.detach()
        after_logits = trig @ W.T + b
        after = float((after_logits.argmax(1) == target_class).float().mean())
        shift = float(((rest @ W[target_class] + b[target_class]) - keep).abs().max())
    return PlantedChange(target_class, trigger_name, before, after, shift, steps)
