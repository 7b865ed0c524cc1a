"""The architecture matrix of issue 17: twelve-odd timm families as users fine-tune them (their own
10-class head, random init, small input where the model allows), version 2 with a planted head-row
swap, and the neurons each family is audited on. Shared by tests/archs and benchmarks/fv_speed.py.

timm's zero-init traps are removed where they would hide a change at random init: ResNet's
zero-initialised last BN of each residual branch (`zero_init_last=False`), ConvNeXt's 1e-6 layer
scale (`ls_init_value=1.0`), Mixer's zero classifier (re-drawn). BatchNorm running statistics are
estimated on the probe photographs, as a trained model's would be on its data, so that features
vary between images instead of being dominated by one uncentred direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

NUM_CLASSES = 10


@dataclass(frozen=True)
class Family:
    key: str
    architecture: str
    model_args: dict = field(default_factory=dict)
    resolution: int = 32              # input side of the matrix's probe and visualizations (token models: img_size)
    slow: bool = False


FAMILIES: dict[str, Family] = {f.key: f for f in [
    Family("resnet18", "resnet18", {"zero_init_last": False}),
    Family("densenet121", "densenet121", slow=True),
    Family("efficientnet_b0", "efficientnet_b0"),
    Family("mobilenetv3", "mobilenetv3_small_100"),
    Family("regnety", "regnety_002"),
    Family("convnext", "convnext_atto", {"ls_init_value": 1.0}, slow=True),
    Family("vit", "vit_tiny_patch16_224", {"img_size": 64}, 64),
    Family("deit", "deit_tiny_patch16_224", {"img_size": 64}, 64),
    Family("swin", "swin_tiny_patch4_window7_224", {"img_size": 64}, 64, slow=True),
    Family("vit_hybrid", "vit_tiny_r_s16_p8_224", {"img_size": 64}, 64, slow=True),
    Family("mixer", "mixer_s32_224", {"img_size": 64}, 64),
]}


def family_params(keys=None):
    """pytest parameters over the families (or the given keys), the heavy ones marked slow."""
    import pytest

    return [pytest.param(f.key, marks=[pytest.mark.slow] if f.slow else [], id=f.key)
            for f in FAMILIES.values() if keys is None or f.key in keys]


def build_model(family: Family, probe_images: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """A random-init model of the family with a 10-class head, the zero-init traps removed and
    BatchNorm statistics estimated on `probe_images`; eval mode."""
    from audit.models import create_architecture

    torch.manual_seed(seed)
    model = create_architecture(family.architecture, {"num_classes": NUM_CLASSES, **family.model_args})
    head = model.get_classifier()
    with torch.no_grad():
        if float(head.weight.abs().max()) == 0:              # Mixer: zero-initialised classifier
            nn.init.normal_(head.weight, std=0.02)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and probe_images is not None:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None                                # cumulative average over the batches
        model.train()
        with torch.no_grad():
            for i in range(0, len(probe_images), 12):
                model(probe_images[i:i + 12])
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def choose_swap(logits: np.ndarray, seed: int, max_rho: float = 0.5) -> tuple[int, int, int]:
    """(a, b, control): the first pair, in a seeded order, whose logits on the probe set are not
    alike (Spearman < max_rho), so that swapping their rows is a real change; a control class
    outside the pair."""
    rng = np.random.default_rng(seed)
    rho = spearmanr(logits).statistic
    pairs = [(a, b) for a in range(NUM_CLASSES) for b in range(a + 1, NUM_CLASSES)]
    for k in rng.permutation(len(pairs)):
        a, b = pairs[k]
        if abs(rho[a, b]) < max_rho:
            control = int(rng.choice([c for c in range(NUM_CLASSES) if c not in (a, b)]))
            return a, b, control
    raise AssertionError("no two classes with dissimilar logits: the fixture's model is degenerate")


def swap_rows(model: nn.Module, a: int, b: int) -> nn.Module:
    """Version 2's planted change, in place: classes a and b exchange their classifier rows (and biases)."""
    head = model.get_classifier()
    with torch.no_grad():
        for t in (head.weight, head.bias):
            if t is not None:
                t[[a, b]] = t[[b, a]].clone()
    return model


def neurons_for(family: Family, model: nn.Module, a: int, control: int, seed: int = 0) -> list[dict]:
    """The family's registered neurons: the swapped class, a control class, an inner channel in the
    middle of the network and, where there is attention, a head."""
    from audit import attention
    from audit.taps import default_taps, layer_channels, output_layer_name

    rng = np.random.default_rng(seed)
    head_layer = output_layer_name(model)
    taps = default_taps(model)
    middle = taps[len(taps) // 2]
    neurons = [
        {"id": "swapped", "kind": "class", "layer": head_layer, "index": a},
        {"id": "control", "kind": "class", "layer": head_layer, "index": control},
        {"id": "inner", "kind": "inner", "layer": middle, "index": int(rng.integers(layer_channels(model, middle)))},
    ]
    attn = [n for n, m in model.named_modules() if attention.is_attention(m)]
    if attn:
        layer = attn[len(attn) // 2]
        heads = attention.head_count(model.get_submodule(layer))
        neurons.append({"id": "head", "kind": "head", "layer": layer, "index": int(rng.integers(heads))})
    return neurons


def save(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
