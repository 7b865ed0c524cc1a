"""Uniform access to the layers of any timm model (CNN, Swin, ViT, hybrid, Mixer): names, layouts,
sizes, default taps spread over depth, and hooks that always come off.

Every activation handed out by `capture` is channels first (`audit.layouts.to_canonical`):
[B, C, H, W] for convolutional maps, Swin's NHWC stages, ViT patch tokens and Swin windows (on
their grid), [B, C, N] for token sequences without a grid, [B, C] for vectors. A layer name may
carry a view: ``blocks.6:all`` / ``blocks.6:class`` pick the tokens, ``blocks.6.attn:heads`` is one
channel per attention head (`audit.attention`). Layouts are read from each output's shape and what
the forward saw (batch, image size, Swin window geometry), never from a fixed probe size.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from . import attention
from .errors import AuditInputError
from .layouts import (ForwardInfo, Layout, LayerName, ModelHints, channels_first, infer_layout, is_windowed_block,
                      model_hints, parse_layer_name, to_canonical, window_geometry)
from .models import model_input_hw

__all__ = ["layer_names", "get_layer", "layer_channels", "layer_layout", "describe_layers", "LayerInfo",
           "channels_first", "default_taps", "final_feature_layer", "capture", "Captured", "output_layer_name"]

_SKIP_TYPES = (nn.Dropout, nn.Identity)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the modules a neuron or tap may address (the root and no-op modules excluded)."""
    return [n for n, m in model.named_modules() if n and not isinstance(m, _SKIP_TYPES)]


def _module(model: nn.Module, name: str) -> nn.Module:
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


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module a layer name addresses (for ``X:heads``, the attention module X, which must have heads)."""
    ln = parse_layer_name(name)
    module = _module(model, ln.module)
    if ln.heads and not attention.is_attention(module):
        raise AuditInputError(f"layer {ln.module!r} ({type(module).__name__}) is not an attention module with heads; "
                              f"head neurons address one, e.g. {_example_attention(model)!r}")
    return module


def _example_attention(model: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if n and attention.is_attention(m)), "blocks.6.attn")


def _summarize_names(names: list[str]) -> list[str]:
    # Top two levels first: what a user usually wants (blocks.5, classifier, ...).
    short = [n for n in names if n.count(".") <= 1]
    return short[:40] + (["..."] if len(short) > 40 else [])


_HINTS: "weakref.WeakKeyDictionary[nn.Module, ModelHints]" = weakref.WeakKeyDictionary()


def _hints(model: nn.Module) -> ModelHints:
    h = _HINTS.get(model)
    if h is None:
        h = _HINTS[model] = model_hints(model, model_input_hw(model))
    return h


class _ForwardRecorder:
    """Pre-hooks that record what each forward pass sees (batch, image size, the window geometry of
    the Swin blocks above the recorded layers), and the layout rules applied with it."""

    def __init__(self, model: nn.Module, module_names: list[str]):
        self.model = model
        self.hints = _hints(model)
        self.info = ForwardInfo()
        self.blocks: dict[str, str | None] = {}         # module name -> its nearest windowed ancestor
        for name in module_names:
            self.blocks[name] = self._windowed_ancestor(name)

    def _windowed_ancestor(self, name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            anc = ".".join(parts[:i])
            try:
                m = self.model.get_submodule(anc)
            except AttributeError:
                continue
            if is_windowed_block(m):
                return anc
        return None

    def install(self) -> list:
        handles = [self.model.register_forward_pre_hook(self._root_pre)]
        for block in sorted({b for b in self.blocks.values() if b is not None}):
            handles.append(self.model.get_submodule(block).register_forward_pre_hook(
                lambda m, args, block=block: self._window_pre(block, m, args)))
        return handles

    def _root_pre(self, _m, args) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            self.info.batch, self.info.image_hw = int(x.shape[0]), (int(x.shape[-2]), int(x.shape[-1]))
        self.info.windows.clear()

    def _window_pre(self, block: str, module: nn.Module, args) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            g = window_geometry(module, tuple(x.shape))
            if g is not None:
                self.info.windows[block] = g

    def layout(self, name: str, module: nn.Module, shape: tuple[int, ...]) -> Layout | None:
        block = self.blocks.get(name)
        window = self.info.windows.get(block) if block is not None else None
        return infer_layout(shape, self.hints, self.info, module, window)


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _not_tappable(name: str, shape) -> AuditInputError:
    return AuditInputError(f"layer {name!r} outputs a tensor of shape {tuple(shape)}, which is not a feature map, "
                           f"token sequence or vector: it cannot be a neuron or tap (`neuron-audit layers` lists those)")


class Captured(dict):
    """Activations recorded by `capture`, by layer name, plus the layout each one was read with.

    With ``raw=True`` the values are the modules' own outputs (for a ``:heads`` view: the attention
    module's pre-projection input), so that gradients can be taken with respect to them;
    `canonical` converts one to channels first."""

    def __init__(self):
        super().__init__()
        self.layouts: dict[str, Layout] = {}
        self.views: dict[str, LayerName] = {}
        self.heads: dict[str, int] = {}

    def canonical(self, name: str, value: torch.Tensor | None = None, reduce_heads: str = "norm") -> torch.Tensor:
        """Channels-first form of a raw capture (or of `value`, a tensor shaped like it, e.g.
        activation x gradient). Heads are reduced per head by their L2 norm or, for relevance, their sum."""
        t = self[name] if value is None else value
        view = self.views[name]
        if view.heads:
            t = attention.per_head(t, self.heads[name], reduce_heads)
        return to_canonical(t, self.layouts[name], view.tokens)


@contextmanager
def capture(model: nn.Module, names: list[str], detach: bool = False, raw: bool = False) -> Iterator[Captured]:
    """Record the outputs of the named layers during forward passes inside the block, channels first
    (see the module docstring; ``raw=True`` keeps the modules' own tensors, see `Captured`).

    Hooks are removed when the block ends, also when it raises. A layer whose output is not a
    feature map, token sequence or vector raises AuditInputError during the forward.
    """
    store = Captured()
    views = {name: parse_layer_name(name) for name in names}
    modules = {name: get_layer(model, name) for name in names}
    recorder = _ForwardRecorder(model, [v.module for v in views.values()])
    handles = []
    try:
        handles.extend(recorder.install())
        for name in names:
            view, module = views[name], modules[name]
            store.views[name] = view
            if view.heads:
                store.heads[name] = attention.head_count(module)
                handles.append(attention.projection(module).register_forward_pre_hook(
                    lambda _m, args, name=name, view=view, module=module: _record_heads(
                        store, recorder, name, view, module, args[0], detach, raw)))
            else:
                handles.append(module.register_forward_hook(
                    lambda m, _inp, out, name=name, view=view: _record(store, recorder, name, view, m, out, detach, raw)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _record(store: Captured, recorder: _ForwardRecorder, name: str, view: LayerName, module: nn.Module, out,
            detach: bool, raw: bool) -> None:
    t = _first_tensor(out)
    if t is None:
        raise _not_tappable(name, getattr(out, "shape", ()))
    layout = recorder.layout(view.module, module, tuple(t.shape))
    if layout is None:
        raise _not_tappable(name, t.shape)
    t = t.detach() if detach else t
    store.layouts[name] = layout
    store[name] = t if raw else to_canonical(t, layout, view.tokens)


def _record_heads(store: Captured, recorder: _ForwardRecorder, name: str, view: LayerName, module: nn.Module,
                  x: torch.Tensor, detach: bool, raw: bool) -> None:
    x = x.detach() if detach else x
    norms = attention.per_head(x, store.heads[name], "norm")          # [B(*nW), N, heads]
    layout = recorder.layout(view.module, module, tuple(norms.shape))
    if layout is None or layout.kind in ("nchw", "nhwc", "vector"):
        raise _not_tappable(name, norms.shape)
    store.layouts[name] = layout
    store[name] = x if raw else to_canonical(norms, layout, view.tokens)


@dataclass(frozen=True)
class LayerInfo:
    """One auditable layer: its address, module type, output layout and channel count."""

    name: str
    module_type: str
    layout: Layout

    @property
    def channels(self) -> int:
        return self.layout.channels


_DESCRIBED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], dict[str, LayerInfo]]]" = \
    weakref.WeakKeyDictionary()


@torch.no_grad()
def describe_layers(model: nn.Module, input_hw: tuple[int, int] | None = None) -> dict[str, LayerInfo]:
    """Every auditable layer of the model, in execution order, from one forward pass at the model's
    own input size (`models.model_input_hw`): modules whose output is a feature map, token sequence
    or vector, plus a ``:heads`` layer for each attention module. Cached per model and size."""
    hw = tuple(input_hw or model_input_hw(model))
    cached = _DESCRIBED.setdefault(model, {})
    if hw in cached:
        return cached[hw]
    names = [n for n in layer_names(model)]
    modules = dict(model.named_modules())
    recorder = _ForwardRecorder(model, names)
    seen: dict[str, LayerInfo] = {}
    handles = []
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training

    def hook(m, _inp, out, name):
        t = _first_tensor(out)
        if t is None or name in seen:
            return
        layout = recorder.layout(name, m, tuple(t.shape))
        if layout is not None:
            seen[name] = LayerInfo(name, type(m).__name__, layout)

    def heads_hook(m, args, name):
        key = f"{name}:heads"
        if key in seen or not args or not isinstance(args[0], torch.Tensor):
            return
        norms = attention.per_head(args[0], attention.head_count(modules[name]), "norm")
        layout = recorder.layout(name, modules[name], tuple(norms.shape))
        if layout is not None and layout.kind in ("tokens", "tokens_cf", "windows"):
            seen[key] = LayerInfo(key, "heads", layout)

    try:
        model.eval()
        handles.extend(recorder.install())
        for name in names:
            m = modules[name]
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name)))
            if attention.is_attention(m):
                handles.append(attention.projection(m).register_forward_pre_hook(
                    lambda mod, args, name=name: heads_hook(mod, args, name)))
        model(torch.zeros(1, 3, *hw, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    cached[hw] = seen
    return seen


def layer_layout(model: nn.Module, name: str) -> Layout:
    """The layout of a layer's output at the model's own input size (views applied to the channels)."""
    ln = parse_layer_name(name)
    get_layer(model, name)
    key = ln.module + (":heads" if ln.heads else "")
    info = describe_layers(model).get(key)
    if info is None:
        raise AuditInputError(f"layer {name!r} does not output a feature map, token sequence or vector in a forward "
                              f"pass at the model's input size; `neuron-audit layers` lists the layers that do")
    if ln.tokens != "patches" and info.layout.kind not in ("tokens", "tokens_cf"):
        raise AuditInputError(f"layer {name!r}: the view ':{ln.tokens}' needs tokens; the layer is {info.layout.describe()}")
    if ln.tokens == "class" and info.layout.prefix == 0:
        raise AuditInputError(f"layer {name!r}: the view ':class' needs class/register tokens; this layer has none")
    return info.layout


def layer_channels(model: nn.Module, name: str, input_size: int | None = None) -> int:
    """Number of channels a layer outputs (conv maps: C of NCHW/NHWC; tokens: the embedding width;
    vectors and classifiers: features; ``:heads``: the number of heads)."""
    layer = get_layer(model, name)
    if isinstance(layer, nn.Linear) and ":" not in name:
        return layer.out_features
    if input_size is not None:
        ln = parse_layer_name(name)
        info = describe_layers(model, (input_size, input_size)).get(ln.module + (":heads" if ln.heads else ""))
        if info is None:
            raise AuditInputError(f"layer {name!r} outputs no feature map, token sequence or vector at {input_size} px")
        return info.channels
    return layer_layout(model, name).channels


def default_taps(model: nn.Module, n: int = 5) -> list[str]:
    """About `n` taps spread over depth: timm's feature_info stages (the same modules
    `forward_intermediates` returns), else evenly spaced blocks."""
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
