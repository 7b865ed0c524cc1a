"""Uniform access to the layers of timm models, CNN or ViT: names, sizes, default
taps spread over depth, and hooks that always come off."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import AuditInputError

_SKIP_TYPES = (nn.Dropout, nn.Identity)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the modules a neuron or tap may address (the root and no-op modules excluded)."""
    return [n for n, m in model.named_modules() if n and not isinstance(m, _SKIP_TYPES)]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    # get_submodule walks the dotted path: hooks are registered on every optimization step, and
    # building the whole named_modules() dict each time cost about 8 % of a VITAL step.
    try:
        if name:
            return model.get_submodule(name)
    except AttributeError:
        pass
    valid = layer_names(model)
    raise AuditInputError(f"unknown layer {name!r}; valid layers include: {', '.join(_summarize_names(valid))} "
                          f"({len(valid)} in all; `neuron-audit layers` lists them)")


def _summarize_names(names: list[str]) -> list[str]:
    # Top two levels first: what a user usually wants (blocks.5, classifier, ...).
    short = [n for n in names if n.count(".") <= 1]
    return short[:40] + (["..."] if len(short) > 40 else [])


@torch.no_grad()
def layer_channels(model: nn.Module, name: str, input_size: int = 64) -> int:
    """Number of channels (CNN: dim 1; tokens: last dim; linear: features) a layer outputs."""
    layer = get_layer(model, name)
    if isinstance(layer, nn.Linear):
        return layer.out_features
    device = next(model.parameters()).device
    with capture(model, [name]) as acts:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    return channels_first(acts[name]).shape[1]


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """Activations as [B, C, N]: conv maps flattened; token layouts (B, N, C) transposed; vectors N=1."""
    if t.dim() == 4:
        return t.flatten(2)
    if t.dim() == 3:
        return t.transpose(1, 2)
    if t.dim() == 2:
        return t.unsqueeze(-1)
    raise ValueError(f"cannot interpret activation of shape {tuple(t.shape)} as channels")


def default_taps(model: nn.Module, n: int = 5) -> list[str]:
    """About `n` taps spread over depth: timm's feature_info stages, else evenly spaced blocks."""
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    if info is not None:
        try:
            names = [f["module"] for f in info]
        except (TypeError, KeyError):
            names = []
    modules = dict(model.named_modules())
    names = [m.replace("_", ".") if m not in modules and m.replace("_", ".") in modules else m for m in names]
    names = [m for m in names if m in modules]
    if not names:
        for container in ("blocks", "layers", "stages", "features"):
            seq = getattr(model, container, None)
            if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
                k = len(seq)
                idx = sorted({round(i * (k - 1) / max(n - 1, 1)) for i in range(n)})
                names = [f"{container}.{i}" for i in idx]
                break
    if not names:
        raise AuditInputError("cannot derive default taps for this model; set `taps:` in the model's config")
    if len(names) > n:
        idx = sorted({round(i * (len(names) - 1) / (n - 1)) for i in range(n)})
        names = [names[i] for i in idx]
    return names


_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "pre_logits", "fc_norm", "head_drop", "head_dist")


def final_feature_layer(model: nn.Module) -> str | None:
    """The last top-level layer before the pooling/classifier head: the feature map the classifier
    pools (timm: what `forward_features` returns), e.g. EfficientNet's bn2, ResNet's layer4."""
    last = None
    for name, child in model.named_children():
        if name in _HEAD_CHILDREN:
            break
        if not isinstance(child, _SKIP_TYPES):
            last = name
    return last


@contextmanager
def capture(model: nn.Module, names: list[str], detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers during forward passes inside the block.

    Hooks are removed when the block ends, also when it raises.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            layer = get_layer(model, name)

            def hook(_m, _inp, out, name=name):
                out = out[0] if isinstance(out, (tuple, list)) else out
                store[name] = out.detach() if detach else out

            handles.append(layer.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def output_layer_name(model: nn.Module) -> str:
    """Name of the classification head (the layer of class neurons)."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is not None:
        head = get_classifier()
        for n, m in model.named_modules():
            if m is head and n:
                return n
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise AuditInputError("model has no linear head; class neurons need one")
    return last[-1]
