"""Benign re-saves of a model: edits that a team makes without meaning to change what any
neuron responds to. The benign null (audit.drift.null) applies them to the baseline to learn
how much each neuron moves when nothing was meant to change.

Edits are registered by name, as LRP rules are (audit.lrp_rules) and as Zennit registers its
composites: `register_benign(name, fn)` for an edit that makes one edited copy (`fn(model)` returns
a new model: an export round trip, a team's int8 calibrator), `register_benign_variants(name,
builder)` for an edit drawn several times (seeds, sizes). A model's null is built from the edits
its config lists (`thresholds.benign_edits`: registered names, or `package.module:function` for a
one-copy edit of the team's own, imported when the config is read); `recipe_key` names the recipe
in the null's cache key. A variant's kind is its edit's name: the null's bound holds per edit.

The built-in edits (`DEFAULT_EDITS`, versioned by `RECIPE_VERSION`):
- `fp16`, `bf16`: every floating tensor rounded to float16 / bfloat16 and back;
- `int8`: conv and linear weights quantized per output channel (symmetric, 127 levels);
- `noise`: Gaussian noise on conv and linear weights with the standard deviation of int8
  per-channel rounding (step / sqrt(12)), at 1x and 2x, two seeds each;
- `bn`: batch-norm statistics re-estimated on 4096 in-distribution images, four seeds. The probe
  images stand for the distribution: each BN layer's statistics move by the deviation of a
  4096-image sample (drawn with replacement) from what the original network measures on the
  whole probe set: the variance by that ratio, the mean by that shift rescaled from the probe's
  spread to the stored one (the probe is not the training distribution; at a low probe
  resolution some channels are far wider or narrower on it than in training). All layers move
  at once, from one pass over the probe set; a real re-estimate runs layer after layer, which
  differs only in second order.
Each builder returns a new model and leaves its argument where it was.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import AuditInputError

RECIPE_VERSION = "benign-null-v6"
BN_SAMPLE_IMAGES = 4096


def _weighted_modules(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight is not None:
            yield m


def round_trip(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy whose floating parameters and buffers went through `dtype` and back."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))
    return m


def int8_step(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel step of symmetric int8 quantization, broadcastable to `weight`."""
    w = weight.detach()
    amax = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    return (amax / 127.0).reshape(-1, *([1] * (w.dim() - 1)))


def int8_per_channel(model: nn.Module) -> nn.Module:
    """A copy whose conv and linear weights are quantized to int8 per output channel and back."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in _weighted_modules(m):
            step = int8_step(mod.weight)
            mod.weight.copy_((mod.weight / step).round().clamp(-127, 127) * step)
    return m


def quantization_noise(model: nn.Module, scale: float, seed: int) -> nn.Module:
    """A copy with Gaussian noise of `scale` x the int8 rounding noise (step / sqrt(12)) on every
    conv and linear weight."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for mod in _weighted_modules(m):
            w = mod.weight
            noise = torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.device, w.dtype)
            w.add_(noise * int8_step(w) * (scale / 12 ** 0.5))
    return m


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def batchnorm_input_moments(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the first and second moments [N, C] of every batch-norm layer's input (float64),
    in `batchnorm_layers` order, from one eval-mode pass. Hooks come off on exit."""
    bns = batchnorm_layers(model)
    out: list[tuple[list, list]] = [([], []) for _ in bns]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    handles = []
    try:
        for i, bn in enumerate(bns):
            def hook(_m, inputs, i=i):
                x = inputs[0].double()
                dims = tuple(range(2, x.dim()))
                out[i][0].append((x.mean(dims) if dims else x).cpu().numpy())
                out[i][1].append(((x * x).mean(dims) if dims else x * x).cpu().numpy())
            handles.append(bn.register_forward_pre_hook(hook))
        model.eval()
        for s in range(0, len(images), batch_size):
            model(images[s:s + batch_size].to(device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(np.concatenate(m1), np.concatenate(m2)) for m1, m2 in out]


def batchnorm_resampled(model: nn.Module, moments: list[tuple[np.ndarray, np.ndarray]], n_images: int,
                        seed: int) -> nn.Module:
    """A copy whose batch-norm statistics carry the sampling error of a re-estimate on `n_images`
    images drawn with replacement from the probe images (`moments` from batchnorm_input_moments)."""
    m = copy.deepcopy(model)
    bns = batchnorm_layers(m)
    n = moments[0][0].shape[0] if moments else 0
    if n == 0:
        return m
    counts = np.bincount(np.random.default_rng(seed).integers(0, n, n_images), minlength=n)
    w = counts / counts.sum()
    with torch.no_grad():
        for bn, (m1, m2) in zip(bns, moments):
            mean_ref = m1.mean(0)
            var_ref = m2.mean(0) - mean_ref ** 2
            stored_var = bn.running_var.detach().cpu().double().numpy()
            alive = var_ref > 1e-8 * np.maximum(stored_var, 1e-12)
            safe_ref = np.where(alive, var_ref, 1.0)
            # The probe's sampling deviation, rescaled from the probe's spread to the stored one (the
            # training distribution's): a channel dead in the stored statistics stays as it is.
            shift = np.where(alive, (w @ m1 - mean_ref) * np.sqrt(stored_var / safe_ref), 0.0)
            mean = w @ m1
            ratio = np.where(alive, np.maximum(w @ m2 - mean ** 2, 0.0) / safe_ref, 1.0)
            bn.running_mean.add_(torch.as_tensor(shift, dtype=bn.running_mean.dtype, device=bn.running_mean.device))
            bn.running_var.mul_(torch.as_tensor(ratio, dtype=bn.running_var.dtype, device=bn.running_var.device))
    return m


@dataclass(frozen=True)
class BenignVariant:
    kind: str          # the edit's registered name: fp16 | bf16 | int8 | noise | bn | a team's own
    name: str          # e.g. "noise x2 seed 3"
    build: Callable[[], nn.Module]


# name -> builder(model, probe_images, batch_size) -> the edit's variants, built lazily
VariantsBuilder = Callable[[nn.Module, torch.Tensor, int], list[BenignVariant]]
_EDITS: dict[str, VariantsBuilder] = {}
_FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def register_benign_variants(name: str, builder: VariantsBuilder | None = None):
    """Register `builder(model, probe_images, batch_size) -> [BenignVariant]` as the benign edit `name`
    (its variants' kind must be `name`). Usable as a decorator."""
    def add(fn: VariantsBuilder) -> VariantsBuilder:
        if not re.match(r"^[\w-]+$", name):
            raise ValueError(f"benign edit name {name!r}: letters, digits, '_' and '-' only")
        _EDITS[name] = fn
        return fn
    return add if builder is None else add(builder)


def register_benign(name: str, fn: Callable[[nn.Module], nn.Module] | None = None):
    """Register a one-copy benign edit: `fn(model)` returns the edited model (it gets a copy of the
    baseline, so it may change it in place). Usable as a decorator: `@register_benign("onnx-fp32")`."""
    def add(edit: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        register_benign_variants(name, lambda model, _images, _batch: [one_copy_variant(name, edit, model)])
        return edit
    return add if fn is None else add(fn)


def one_copy_variant(name: str, edit: Callable[[nn.Module], nn.Module], model: nn.Module) -> BenignVariant:
    """The variant that applies `edit` to a copy of `model`; its result must be a torch module."""
    def build() -> nn.Module:
        out = edit(copy.deepcopy(model))
        if not isinstance(out, nn.Module):
            raise AuditInputError(f"benign edit {name!r} returned {type(out).__name__}, not a torch.nn.Module")
        return out.eval()
    doc = (edit.__doc__ or "").strip()
    return BenignVariant(name, doc.splitlines()[0] if doc else name, build)


def registered_benign() -> list[str]:
    return sorted(_EDITS)


def _imported_edit(spec: str) -> Callable[[nn.Module], nn.Module]:
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise AuditInputError(f"benign edit {spec!r}: cannot import module {module!r} ({exc})") from None
    except AttributeError:
        raise AuditInputError(f"benign edit {spec!r}: module {module!r} has no {attr!r}") from None
    if not callable(fn):
        raise AuditInputError(f"benign edit {spec!r} is not a function")
    return fn


def resolve_benign(name: str) -> VariantsBuilder:
    """The builder of a registered edit, or of `package.module:function` (a one-copy edit); an
    AuditInputError naming the valid choices otherwise."""
    if name in _EDITS:
        return _EDITS[name]
    if _FUNCTION_SPEC.match(name):
        fn = _imported_edit(name)
        return lambda model, _images, _batch: [one_copy_variant(name, fn, model)]
    raise AuditInputError(f"unknown benign edit {name!r}; valid: {', '.join(registered_benign())}, "
                          f"or package.module:function (a function of the model that returns the edited copy)")


def recipe_key(edits: Sequence[str]) -> str:
    """What a null was built from, for its cache key: the recipe version, the edits in order and, for
    an imported function, a hash of its source (editing the function rebuilds the null)."""
    parts = [RECIPE_VERSION]
    for name in edits:
        if name in _EDITS or not _FUNCTION_SPEC.match(name):
            parts.append(name)
            continue
        fn = _imported_edit(name)
        try:
            code = inspect.getsource(fn)
        except (OSError, TypeError):
            code = getattr(fn, "__qualname__", name)
        parts.append(f"{name}@{hashlib.sha256(code.encode()).hexdigest()[:12]}")
    return "|".join(parts)


@register_benign("fp16")
def _fp16(model: nn.Module) -> nn.Module:
    """float16 round trip"""
    return round_trip(model, torch.float16)


@register_benign("bf16")
def _bf16(model: nn.Module) -> nn.Module:
    """bfloat16 round trip"""
    return round_trip(model, torch.bfloat16)


@register_benign("int8")
def _int8(model: nn.Module) -> nn.Module:
    """int8 per-channel weights"""
    return int8_per_channel(model)


@register_benign_variants("noise")
def _noise(model: nn.Module, _images: torch.Tensor, _batch: int) -> list[BenignVariant]:
    return [BenignVariant("noise", f"int8-scale noise x{scale:g} seed {seed}",
                          lambda scale=scale, seed=seed: quantization_noise(model, scale, seed))
            for scale, seed in ((1.0, 1), (1.0, 2), (2.0, 3), (2.0, 4))]


@register_benign_variants("bn")
def _bn(model: nn.Module, images: torch.Tensor, batch_size: int) -> list[BenignVariant]:
    """Four BN re-estimates (none for a network without batch norm); they share one moments pass over
    the probe images, made on first use."""
    if not batchnorm_layers(model):
        return []
    moments: list = []

    def bn_variant(seed: int) -> nn.Module:
        if not moments:
            moments.append(batchnorm_input_moments(model, images, batch_size))
        return batchnorm_resampled(model, moments[0], BN_SAMPLE_IMAGES, seed)

    return [BenignVariant("bn", f"BN re-estimated on {BN_SAMPLE_IMAGES} images seed {seed}",
                          lambda seed=seed: bn_variant(seed)) for seed in (1, 2, 3, 4)]


DEFAULT_EDITS = ("fp16", "bf16", "int8", "noise", "bn")


def benign_recipe(model: nn.Module, probe_images: torch.Tensor, batch_size: int = 32,
                  edits: Sequence[str] = DEFAULT_EDITS) -> list[BenignVariant]:
    """The variants of `edits` applied to `model`, built lazily (one model alive at a time)."""
    out: list[BenignVariant] = []
    for name in edits:
        out.extend(resolve_benign(name)(model, probe_images, batch_size))
    return out
