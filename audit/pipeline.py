"""Pure-library steps of one audit, wrapped by the Prefect flows: which neurons to
render, with which references and settings, and the content keys that make every
result reusable when nothing upstream of it changed."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .assets import load_rgb_images, resolve_images
from .config import ModelConfig, NeuronConfig
from .errors import AuditInputError
from .records import NeuronTarget
from .taps import default_taps, output_layer_name

TOPK_REFERENCES = "top-k"


def neuron_target(n: NeuronConfig) -> NeuronTarget:
    return NeuronTarget(n.id, n.kind, n.activation_layer, n.index)


def uses_relevance(n: NeuronConfig) -> bool:
    """Inner neurons and data-driven class neurons weight the taps by relevance; the
    paper's class form (a folder or sample as references) does not."""
    return n.kind in ("inner", "head") or (n.references or TOPK_REFERENCES) == TOPK_REFERENCES


def model_taps(model_cfg: ModelConfig, model: nn.Module) -> list[str]:
    return list(model_cfg.visualization.taps or default_taps(model))


def upstream_weights_sha256(model: nn.Module, layers: list[str]) -> str:
    """Hash of the parameters and buffers that can influence the given layers' outputs:
    everything registered up to and including the deepest of them (timm registers
    modules in execution order). A head-only fine-tune leaves it unchanged for taps
    below the head."""
    names = [n for n, _ in model.named_modules()]
    position = {n: i for i, n in enumerate(names)}
    missing = [l for l in layers if l not in position]
    if missing:
        raise AuditInputError(f"unknown layer {missing[0]!r}")
    deepest = max(position[l] for l in layers)
    deepest_name = names[deepest]
    h = hashlib.sha256()
    state = model.state_dict()
    for key, tensor in state.items():
        module_name = key.rsplit(".", 1)[0]
        inside = module_name == deepest_name or module_name.startswith(deepest_name + ".")
        if position.get(module_name, deepest + 1) <= deepest or inside:
            t = tensor.detach().cpu().contiguous()
            h.update(key.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def settings_sha256(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def visualization_content_key(model: nn.Module, n: NeuronConfig, taps: list[str], references: torch.Tensor,
                              method: str, settings: dict, seed: int) -> str:
    """Content key of one visualization: upstream weights + references + settings + seed.

    The target layer counts as upstream only when the loss sees it (relevance forms)."""
    layers = list(taps) + ([n.layer] if uses_relevance(n) else [])
    parts = {
        "weights": upstream_weights_sha256(model, layers),
        "references": tensor_sha256(references),
        "target": [n.kind, n.layer, n.index, uses_relevance(n)],
        "method": method,
        "settings": settings_sha256(settings),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class NeuronReferences:
    images: torch.Tensor          # normalized [R, 3, S, S]
    description: str              # what they are, for the record and the dashboard
    use_relevance: bool


def references_for(n: NeuronConfig, model: nn.Module, probe_images: torch.Tensor, probe_values: np.ndarray,
                   size: int, count: int, seed: int, base_dir: Path | None = None) -> NeuronReferences:
    """Reference images of one neuron for VITAL.

    - class neuron, `references:` a folder or built-in sample: random crops of those photos (the paper's form);
    - class neuron, `references: top-k` (or none): the neuron's top-activating probe images, per version;
    - inner neuron: the top-activating receptive-field patches of the probe set.
    """
    from . import references as refs

    if n.kind in ("inner", "head"):
        have_values = probe_values is not None and np.any(probe_values)
        imgs = refs.inner_patch_references(model, n.activation_layer, n.index, probe_images, k=count, size=size,
                                           peak_values=probe_values if have_values else None)
        return NeuronReferences(imgs, f"top-{count} probe patches of {n.activation_layer}[{n.index}]", True)
    if (n.references or TOPK_REFERENCES) == TOPK_REFERENCES:
        imgs = refs.topk_image_references(probe_images, probe_values, k=count)
        if imgs.shape[-1] != size:
            imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
        return NeuronReferences(imgs, f"top-{count} probe images of the logit", True)
    photos = load_rgb_images(resolve_images(n.references, base_dir), min_count=1, source=n.references).images
    imgs = refs.class_references(photos, size=size, n=count, seed=seed)
    return NeuronReferences(imgs, f"{count} crops of {n.references}", False)


def class_layer_ok(model: nn.Module, n: NeuronConfig) -> str | None:
    if n.kind == "class" and n.layer != output_layer_name(model):
        return (f"neuron {n.id!r} is a class neuron but layer {n.layer!r} is not the model's head "
                f"({output_layer_name(model)!r})")
    return None
