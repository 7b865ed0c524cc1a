"""Content keys of results: what produced them, as one hash each.

* a loaded model (`model_content_key`): its weights, its module tree as built and how it was
  built (architecture, `model_args`, `num_classes`). It keys the activation cache
  (`audit.stats`) and the benign null (`audit.drift.null`), so a model built with other
  `model_args` around the same weights never reads another model's activations;
* a neuron's probe statistics (`statistics_content_key`): the model's key, the neuron's
  definition (kind, the layer address its values are read from, index), the probe set's
  content and `STATS_VERSION`. A stored row is read back only under the same key, so a changed
  `index`, or another checkpoint behind the same version label, is computed again;
* a VITAL render, below.

What a VITAL render reads, and the content key that names its result: one place decides both, so that a stored visualization is reused exactly when nothing it
depends on changed:

* the taps (`render_taps`): the tap set of the settings (`vital_default_taps`, the fast
  preset's; `paper_taps`, the authors' stem + four stages) or the config's own list;
* which of them a neuron reads (`read_layers`): the taps with a non-zero weight, and, in the
  relevance-weighted form, only those computed before the target (LRP from the target gives
  zero relevance after it) plus the target layer itself;
* which parameters those layers read (`read_state_sha256`): every parameter and buffer of a
  module whose forward starts before the last read layer's forward ends, found by running the
  model once with hooks (`forward_trace`), so the execution order, not the registration
  order, decides. EfficientNet's `conv_head` and `bn2` are read by a class neuron whose taps
  end at `bn2`; the classifier is not (the paper form never runs it);
* the key (`content_key`): that hash, the references, the target, the resolved settings
  (the same object the render uses), the seed, the method and `RENDER_VERSION`.

`audit.vital` renders with `render_taps` and the same weights, so the key and the render
cannot disagree.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .layouts import parse_layer_name
from .models import model_input_size, weights_sha256 as state_sha256
from .records import NeuronTarget
from .taps import default_taps, final_feature_layer, get_layer

__all__ = ["STATS_VERSION", "module_tree_sha256", "model_content_key", "statistics_content_key",
           "RENDER_VERSION", "TAP_SETS", "vital_default_taps", "paper_taps", "render_taps", "ForwardTrace",
           "forward_trace", "read_layers", "read_state_sha256", "tensor_sha256", "content_key"]

# Bump when a statistic's definition changes: the per-image reductions of a layer (`audit.stats`: spatial max,
# spatial mean, the pooled grid; a class neuron's value is its logit) or the summaries of a neuron's values
# (`audit.stats.summarize`: quantiles, histogram, top-k). Stored statistics, cached activations and benign
# nulls made under another version are then never read.
STATS_VERSION = "stats-1"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def module_tree_sha256(model: nn.Module) -> str:
    """Hash of the module tree as built: each module's name, class and own settings (its `extra_repr`:
    kernel sizes, activation and pooling types, epsilons...), object addresses removed so that the hash is
    the same in every process."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        settings = _ADDRESS.sub("", m.extra_repr())
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{settings}\n".encode())
    return h.hexdigest()


def model_content_key(model: nn.Module, weights_sha256: str | None = None,
                      build: Mapping[str, Any] | None = None) -> str:
    """What a model's outputs depend on, as one key: the weights (`weights_sha256`, the SHA-256 of the state
    dict, `audit.models.weights_sha256`: computed when not given), the module tree as built
    (`module_tree_sha256`) and how the model was built (`build`: the config's architecture, `model_args` and
    `num_classes`; a model argument may change the forward without changing the tree, e.g. a ViT's
    `global_pool`). Without `build`, timm's architecture name stands for it."""
    if build is None:
        build = {"architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture")}
    parts = {"weights": weights_sha256 or state_sha256(model), "modules": module_tree_sha256(model),
             "build": dict(build)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def statistics_content_key(model_key: str, target: NeuronTarget, probe_sha256: str) -> str:
    """Content key of one neuron's statistics on a probe set: the model (`model_content_key`), the neuron's
    definition (kind, the layer address its values are read from, index; not its id or label, which change
    no value), the probe set's content (its SHA-256 covers the images and their preprocessing) and
    `STATS_VERSION`."""
    parts = {"statistics": STATS_VERSION, "model": model_key,
             "neuron": [target.kind, target.layer, int(target.index)], "probe": probe_sha256}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# Bump when the render's algorithm changes in a way that changes images for the same settings.
RENDER_VERSION = "vital-render-3"
TAP_SETS = ("vital", "paper")

_STEM_NORMS = ("bn1", "conv_stem", "stem", "patch_embed", "conv1")           # the fast preset reads the normed stem
_STEM_CONVS = ("conv_stem", "conv1", "stem", "patch_embed", "features.conv0")  # the authors read the stem conv


def _first_present(model: nn.Module, names: Sequence[str]) -> str | None:
    modules = dict(model.named_modules())
    return next((n for n in names if n in modules), None)


def vital_default_taps(model: nn.Module) -> list[str]:
    """The fast preset's taps: the stem (first of bn1, conv_stem, stem, patch_embed, conv1 that
    exists), default_taps (the feature_info stages), and the feature map the classifier pools
    when the model computes new channels after its last stage (EfficientNet's conv_head:
    320 -> 1280 at bn2). Without that map, class evidence that only forms in the head is
    unconstrained, and Lite0's cat images drift to tabby/tiger cat (self top-1 0.83 -> 1.00
    over 4 classes x 3 seeds, benchmarks/fv_quality.py)."""
    stem = _first_present(model, _STEM_NORMS)
    taps = ([stem] if stem else []) + [t for t in default_taps(model) if t != stem]
    final = final_feature_layer(model)
    if final and final not in taps and not any(t.startswith(final + ".") for t in taps) \
            and _head_adds_channels(model):
        taps.append(final)
    return taps


def paper_taps(model: nn.Module) -> list[str]:
    """The authors' five taps (adagorgun/VITAL, `return_nodes`): the stem convolution and the
    outputs of the four stages (ResNet: conv1, layer1..layer4). On timm models: the stem conv,
    then the last four feature_info levels at reduction >= 4 (Lite0: conv_stem, blocks.1, 2, 4,
    6); models without such levels (ViTs) take four blocks spread over depth, as the authors'
    ViT nodes are (blocks 0, 4, 8, 11 of 12)."""
    stem = _first_present(model, _STEM_CONVS)
    stages: list[str] = []
    info = getattr(model, "feature_info", None)
    try:
        levels = [(f["module"], int(f.get("reduction", 0))) for f in info]
    except (TypeError, KeyError, ValueError):
        levels = []
    modules = dict(model.named_modules())
    levels = [(m if m in modules else m.replace("_", "."), r) for m, r in levels]
    levels = [(m, r) for m, r in levels if m in modules]
    if len({r for _, r in levels}) > 1:
        stages = [m for m, r in levels if r >= 4][-4:]
    if len(stages) < 4:
        stages = default_taps(model, n=4)
    return ([stem] if stem and stem not in stages else []) + [s for s in stages if s != stem]


def _head_adds_channels(model: nn.Module) -> bool:
    """timm: the pooled feature map has other channels (`num_features`) than the last stage."""
    info = getattr(model, "feature_info", None)
    try:
        last_stage = int(info[-1]["num_chs"])
    except (TypeError, KeyError, IndexError, ValueError):
        return False
    num_features = getattr(model, "num_features", None)
    return isinstance(num_features, int) and num_features != last_stage


def render_taps(model: nn.Module, taps: Sequence[str] | None, tap_set: str = "vital") -> list[str]:
    """The taps a render uses: the explicit list, else the named tap set. Every name is checked."""
    if taps:
        out = list(taps)
    elif tap_set == "paper":
        out = paper_taps(model)
    elif tap_set == "vital":
        out = vital_default_taps(model)
    else:
        raise ValueError(f"unknown tap set {tap_set!r}; valid: {', '.join(TAP_SETS)}")
    for t in out:
        get_layer(model, t)
    return out


@dataclass(frozen=True)
class ForwardTrace:
    """When each module's forward started and ended, as positions in one sequence of events."""

    start: dict[str, int]
    end: dict[str, int]

    def end_of(self, layer: str) -> int | None:
        """When the module a layer address names (`blocks.6.attn:heads` -> `blocks.6.attn`) ends; None
        when it does not run in the forward."""
        return self.end.get(parse_layer_name(layer).module)

    def ends_before(self, a: str, b: str) -> bool:
        """Is layer a's output computed no later than layer b's?"""
        return self.end_of(a) <= self.end_of(b)


_TRACE_CACHE: dict[tuple, ForwardTrace] = {}


def _structure_signature(model: nn.Module) -> tuple:
    return (type(model).__qualname__, hash(tuple((n, type(m).__qualname__) for n, m in model.named_modules())))


@torch.no_grad()
def forward_trace(model: nn.Module, size: int | None = None) -> ForwardTrace:
    """Run the model once on zeros with a pre-hook and a hook on every module (removed on exit)
    and record the order of starts and ends. Cached per module structure and input size (the
    order does not depend on the weights)."""
    size = size or model_input_size(model)
    key = (_structure_signature(model), size)
    if key in _TRACE_CACHE:
        return _TRACE_CACHE[key]
    events = [0]
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    handles = []

    def pre(name):
        def hook(_m, _i):
            events[0] += 1
            start.setdefault(name, events[0])
        return hook

    def post(name):
        def hook(_m, _i, _o):
            events[0] += 1
            end[name] = events[0]
        return hook

    was_training = model.training
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    try:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name)))
        model.eval()
        model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    trace = ForwardTrace(start, end)
    _TRACE_CACHE[key] = trace
    return trace


def read_layers(trace: ForwardTrace, taps: Sequence[str], weights: Sequence[float], target_layer: str,
                use_relevance: bool, reads_target: bool = False) -> list[str]:
    """The layers whose outputs one neuron's loss depends on.

    Paper form: the taps with a non-zero weight, and the target layer when the loss reads the
    target itself (`reads_target`: VITAL's class term). Relevance form: of those, the ones
    computed no later than the target (relevance is zero after it), and the target layer itself."""
    if len(weights) != len(taps):
        raise ValueError(f"{len(weights)} tap weights for {len(taps)} taps ({list(taps)})")
    layers = [t for t, w in zip(taps, weights) if w != 0]
    if use_relevance:
        layers = [t for t in layers if trace.ends_before(t, target_layer)] + [target_layer]
    elif reads_target:
        layers = layers + [target_layer]
    return list(dict.fromkeys(layers))


def tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def read_state_sha256(model: nn.Module, layers: Sequence[str], trace: ForwardTrace | None = None) -> str:
    """Hash of the parameters and buffers the given layers' outputs can depend on: those owned
    (directly) by every module whose forward starts before the last of the layers ends."""
    trace = trace or forward_trace(model)
    missing = [l for l in layers if trace.end_of(l) is None]
    if missing:
        get_layer(model, missing[0])                      # an unknown name: the readable error
        raise ValueError(f"layer {missing[0]!r} does not run in the model's forward")
    deadline = max(trace.end_of(l) for l in layers)
    h = hashlib.sha256()
    for name, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
        if trace.start.get(name, deadline + 1) >= deadline:
            continue
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for pname, t in tensors:
            if t is None:
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{name}.{pname}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def content_key(model: nn.Module, target_layer: str, index: int, use_relevance: bool, references: torch.Tensor,
                settings: dict, seed: int, method: str = "vital") -> str:
    """Content key of one visualization.

    `settings` is the resolved settings dump the render uses (`VitalSettings.resolved(...)
    .model_dump(mode="json")`), from which the taps and this neuron's tap weights are read.
    The device is not part of the key (the same settings give the same image up to floating
    point on any device)."""
    relevance_weights = settings.get("inner_tap_weights") if use_relevance else None
    weights = relevance_weights or settings["tap_weights"]
    layers = read_layers(forward_trace(model), settings["taps"], weights, target_layer, use_relevance,
                         reads_target=float(settings.get("class_weight") or 0) > 0)
    keyed_settings = {k: v for k, v in settings.items() if k not in ("device",)}
    parts = {
        "render": RENDER_VERSION,
        "weights": read_state_sha256(model, layers),
        "read_layers": layers,
        "references": tensor_sha256(references),
        "target": [target_layer, int(index), bool(use_relevance)],
        "method": method,
        "settings": keyed_settings,
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
