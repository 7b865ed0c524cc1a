"""VITAL feature visualization (Görgün, Schiele, Fischer, ICCV 2025), on any timm model.

Starting from noise, an image (in ImageNet-normalized space) is optimized so that, at
several taps, each channel's sorted activation values match the mean of the reference
images' sorted values (`audit.sortmatch`), plus total-variation (L1, L2) and L2 priors;
every step applies a random jitter (`torch.roll`) and a random horizontal flip; Adam
(betas 0.5, 0.9) with linear warm-up and cosine decay; pixels are clipped to the valid
normalized range after each step; optional half-resolution warm start.

Two forms:

* class neuron, paper form (``use_relevance=False``): references are real photographs of
  the class; the target logit is not in the loss;
* inner neurons and the data-driven class form (``use_relevance=True``): references are
  the neuron's top-activating images/patches; LRP relevance of the target (channel
  ``index`` at ``layer`` spatially summed, or the class logit; `audit.relevance`) weights
  the features at each tap (relevance min-max normalized per channel to [0, 1] and
  multiplied into the activations of the references and, recomputed every step, of the
  synthetic image) and each channel's importance (per-channel max relevance of the
  references, min-max normalized over channels, averaged over references) weights that
  channel's loss. Taps the target does not depend on get zero importance. A transparency
  mask (accumulated |d loss / d image|, clipped at its 98th percentile, scaled to [0, 1])
  is returned with every image.

Several neurons are optimized together as one batch: each batch element has its own
references, target, augmentation draws and loss (the priors and the sort-matching loss are
per element, the model is in eval mode), so batching changes nothing but speed.

Cost (`benchmarks/fv_speed.py`, 2-core development CPU, Lite0 at 224 px, taps bn1 + blocks
0,1,2,4,6 + bn2, batch 1): bare forward+backward ~40 ms; one whole `render_vital` step (jitter, flip,
priors, sort matching with the default ``sort_samples=4096``, mask, Adam, clipping) ~1.25-1.3x
of it, since the forward stops at the deepest tap (the classifier is not run in the paper form);
the references are forwarded and sorted once per run (~0.5 s per neuron, reported apart as
``seconds - loop_seconds``). The relevance form adds one LRP forward+backward per step.
`benchmark_step` measures the loss step alone.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .models import IMAGENET_MEAN, IMAGENET_STD, model_input_size, to_uint8_image
from .optimize import History, LossPlateau, optimize
from .priors import l2_prior, total_variation_l1, total_variation_l2
from .records import NeuronTarget, Visualization
from .relevance import tap_relevance
from .sortmatch import resample_sorted, sort_matching_loss, sorted_reference
from .taps import capture, channels_first, default_taps, final_feature_layer, get_layer, output_layer_name
from .transforms import Compose, Jitter, RandomFlip

__all__ = ["VitalSettings", "VitalRequest", "render_vital", "register_family_defaults", "family_defaults",
           "vital_default_taps", "benchmark_step"]

_STEM_CANDIDATES = ("bn1", "conv_stem", "stem", "patch_embed", "conv1")


class VitalSettings(BaseModel):
    """Settings of one VITAL run. `for_model` applies the per-family defaults."""

    model_config = ConfigDict(extra="forbid")

    resolution: int | None = Field(default=None, ge=16, le=1024)   # None: the model's input size
    steps: int = Field(default=400, ge=1)
    lr: float = Field(default=0.25, gt=0)
    warmup: int | None = Field(default=None, ge=0)                 # None: 5 % of the steps
    betas: tuple[float, float] = (0.5, 0.9)
    feat_weight: float = 1.0
    tv_l1: float = 0.0
    tv_l2: float = 0.0
    l2: float = 0.0
    jitter: int | None = Field(default=None, ge=0)                 # None: 30 px scaled with resolution/224
    flip: bool = True
    taps: list[str] | None = None                                  # None: vital_default_taps(model)
    tap_weights: list[float] | None = None
    half_res_warm_start: bool = False                              # first half of the steps at half resolution
    use_relevance: bool | None = None                              # default for requests that leave it None
    sort_samples: int | None = Field(default=4096, ge=16)          # None: sort every position
    plateau_patience: int | None = None                            # stop early on a loss plateau (window)

    @classmethod
    def for_model(cls, model: nn.Module | str, **overrides: Any) -> "VitalSettings":
        arch = model if isinstance(model, str) else _architecture(model)
        return cls(**{**family_defaults(arch), **overrides})


_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_family_defaults(prefix: str, **overrides: Any) -> None:
    """Defaults for architectures whose timm name starts with `prefix` (longest prefix wins)."""
    unknown = set(overrides) - set(VitalSettings.model_fields)
    if unknown:
        raise ValueError(f"unknown VitalSettings fields {sorted(unknown)}")
    VitalSettings(**overrides)      # validate values
    _FAMILY_DEFAULTS[prefix] = dict(overrides)


def family_defaults(architecture: str) -> dict[str, Any]:
    best = max((p for p in _FAMILY_DEFAULTS if architecture.startswith(p)), key=len, default=None)
    return dict(_FAMILY_DEFAULTS.get(best, {})) if best is not None else {}


# Per-family defaults (authors' configs where they exist: ViT and ConvNeXt from class_fvis/utils/config.py).
register_family_defaults("efficientnet", lr=0.25)
register_family_defaults("tf_efficientnet", lr=0.25)
register_family_defaults("mobilenet", lr=0.25)
register_family_defaults("resnet", lr=0.25)
register_family_defaults("vit", lr=0.25, tv_l2=0.003, l2=0.003)
register_family_defaults("deit", lr=0.25, tv_l2=0.003, l2=0.003)
register_family_defaults("convnext", lr=0.25, tap_weights=[10, 1, 1, 1, 1])


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__.lower())


@dataclass
class VitalRequest:
    """One neuron to render: its target, its references [R, 3, S, S] (ImageNet-normalized) and
    whether the relevance-weighted form is used (None: the settings' default, else inner -> True)."""

    target: NeuronTarget
    references: torch.Tensor
    use_relevance: bool | None = None


def vital_default_taps(model: nn.Module) -> list[str]:
    """The stem (first of bn1, conv_stem, stem, patch_embed, conv1 that exists), default_taps (the
    feature_info stages), and the feature map the classifier pools when the model computes new
    channels after its last stage (EfficientNet's conv_head: 320 -> 1280 at bn2). The authors'
    taps end at that map (ResNet's layer4); without it class evidence that only forms in the head
    is unconstrained, and Lite0's cat images drift to tabby/tiger cat (self top-1 0.83 -> 1.00
    over 4 classes x 3 seeds, benchmarks/fv_quality.py)."""
    modules = dict(model.named_modules())
    stem = next((c for c in _STEM_CANDIDATES if c in modules), None)
    taps = ([stem] if stem else []) + [t for t in default_taps(model) if t != stem]
    final = final_feature_layer(model)
    if final and final not in taps and not any(t.startswith(final + ".") for t in taps) \
            and _head_adds_channels(model):
        taps.append(final)
    return taps


def _head_adds_channels(model: nn.Module) -> bool:
    """timm: the pooled feature map has other channels (`num_features`) than the last stage."""
    info = getattr(model, "feature_info", None)
    try:
        last_stage = int(info[-1]["num_chs"])
    except (TypeError, KeyError, IndexError, ValueError):
        return False
    num_features = getattr(model, "num_features", None)
    return isinstance(num_features, int) and num_features != last_stage


class _StopForward(Exception):
    pass


@contextmanager
def _stop_after(model: nn.Module, name: str | None) -> Iterator[None]:
    """Abort the forward pass right after layer `name` ran (hooks registered later than capture's)."""
    if name is None:
        yield
        return

    def hook(_m, _i, _o):
        raise _StopForward

    handle = get_layer(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _forward(model: nn.Module, x: torch.Tensor, stop: str | None) -> None:
    with _stop_after(model, stop):
        try:
            model(x)
        except _StopForward:
            pass


@torch.no_grad()
def _execution_order(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> list[str]:
    order: list[str] = []
    handles = []
    try:
        for n in dict.fromkeys(names):
            handles.append(get_layer(model, n).register_forward_hook(
                lambda _m, _i, _o, n=n: order.append(n) if n not in order else None))
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _minmax(t: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    t = t - t.amin(dim, keepdim=True)
    return t / (t.amax(dim, keepdim=True) + 1e-6)


def _clip_(x: torch.Tensor) -> None:
    for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        x[:, c].clamp_(-m / s, (1 - m) / s)


def _resolve_target_layer(model: nn.Module, target: NeuronTarget) -> str:
    if target.kind == "class" and target.layer in ("", "logits", "head"):
        return output_layer_name(model)
    return target.layer


@dataclass
class _PhaseRefs:
    sorted: dict[str, torch.Tensor]            # tap -> [B, C, N]
    weight: dict[str, torch.Tensor] | None     # tap -> [B, C] (ones for elements without relevance)


def _prepare_refs(model: nn.Module, requests: Sequence[VitalRequest], rel: Sequence[bool], taps: Sequence[str],
                  layers: Sequence[str], res: int, pool: int, stop: str | None, device: torch.device,
                  chunk: int = 8) -> _PhaseRefs:
    sorted_by_tap: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    weight_by_tap: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    for req, use_rel, layer in zip(requests, rel, layers):
        refs = req.references.to(device=device, dtype=torch.float32)
        if refs.shape[-1] != res or refs.shape[-2] != res:
            refs = F.interpolate(refs, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        if pool > 1:
            refs = F.avg_pool2d(refs, pool)
        sums: dict[str, torch.Tensor] = {}
        imps: dict[str, torch.Tensor] = {}
        for i in range(0, refs.shape[0], chunk):
            part = refs[i:i + chunk]
            with torch.no_grad(), capture(model, list(taps), detach=True) as acts:
                _forward(model, part, stop)
            feats = {t: channels_first(acts[t]).float() for t in taps}
            if use_rel:
                r = tap_relevance(model, part, layer, req.target.index, taps)
                for t in taps:
                    rt = channels_first(r[t]).float()
                    feats[t] = feats[t] * _minmax(rt, -1)
                    imp = _minmax(rt.amax(-1), -1)                      # [r, C]
                    imps[t] = imps.get(t, 0) + imp.sum(0)
            for t in taps:
                sums[t] = sums.get(t, 0) + sorted_reference(feats[t]) * part.shape[0]
        n_ref = refs.shape[0]
        for t in taps:
            sorted_by_tap[t].append(sums[t] / n_ref)
            c = sums[t].shape[0]
            weight_by_tap[t].append(imps[t] / n_ref if use_rel else torch.ones(c, device=device))
    srt = {t: torch.stack(v) for t, v in sorted_by_tap.items()}
    wts = {t: torch.stack(v) for t, v in weight_by_tap.items()} if any(rel) else None
    return _PhaseRefs(srt, wts)


def render_vital(model: nn.Module, requests: Sequence[VitalRequest], settings: VitalSettings | None = None,
                 seed: int = 0, device: str | torch.device | None = None,
                 progress: Callable[[int, torch.Tensor], None] | None = None) -> list[Visualization]:
    """Render the requested neurons together (one batch element each); one Visualization per request.

    Seeded: the noise, jitter, flips and position subsets come from explicit generators, so the
    same seed on the same machine gives the same bytes. Runs on CUDA when available (or `device`).
    The model is put in eval mode with frozen parameters for the run and restored afterwards.
    """
    if not requests:
        return []
    settings = settings or VitalSettings.for_model(model)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = next(model.parameters())
    old_device, was_training = first.device, model.training
    flags = [p.requires_grad for p in model.parameters()]
    t_start = time.perf_counter()
    try:
        model.to(dev).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return _render(model, list(requests), settings, seed, dev, progress, t_start)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.to(old_device)
        model.train(was_training)


def _render(model: nn.Module, requests: list[VitalRequest], settings: VitalSettings, seed: int, dev: torch.device,
            progress, t_start: float) -> list[Visualization]:
    res = settings.resolution or model_input_size(model)
    taps = list(settings.taps) if settings.taps else vital_default_taps(model)
    tap_w = list(settings.tap_weights) if settings.tap_weights else [1.0] * len(taps)
    if len(tap_w) != len(taps):
        raise ValueError(f"{len(tap_w)} tap_weights for {len(taps)} taps ({taps})")
    for t in taps:
        get_layer(model, t)
    b = len(requests)
    rel = [bool(r.use_relevance if r.use_relevance is not None else
                (settings.use_relevance if settings.use_relevance is not None else r.target.kind == "inner"))
           for r in requests]
    layers = [_resolve_target_layer(model, r.target) for r in requests]
    for layer in layers:
        get_layer(model, layer)
    probe = torch.zeros(1, 3, res, res, device=dev)
    order = _execution_order(model, taps, probe)
    stop = order[-1] if len(order) == len(set(taps)) else None
    jitter = settings.jitter if settings.jitter is not None else round(30 * res / 224)

    g_init = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, res, res, generator=g_init).to(dev).requires_grad_(True)
    g_aug = torch.Generator().manual_seed(seed + 1)
    g_sub = torch.Generator().manual_seed(seed + 2)
    mask_acc = torch.zeros(b, res, res, device=dev)
    rel_idx = [i for i, r in enumerate(rel) if r]

    phases = [(1, settings.steps)]
    if settings.half_res_warm_start and settings.steps >= 2:
        half = settings.steps // 2
        phases = [(2, half), (1, settings.steps - half)]
    histories: list[History] = []
    step_offset = 0
    for pool, steps in phases:
        refs = _prepare_refs(model, requests, rel, taps, layers, res, pool, stop, dev)
        if settings.sort_samples:      # quantiles of the position subsets, computed once
            refs.sorted = {t: resample_sorted(v, min(v.shape[-1], settings.sort_samples)) for t, v in refs.sorted.items()}
        aug = Compose([Jitter(jitter // pool, generator=g_aug)] + ([RandomFlip(0.5, generator=g_aug)] if settings.flip else []))
        weights = refs.weight

        def loss_fn(step: int, pool=pool, refs=refs, aug=aug, weights=weights) -> torch.Tensor:
            xin = F.avg_pool2d(x, pool) if pool > 1 else x
            xj = aug(xin)
            syn_rel = None
            if rel_idx:
                r = tap_relevance(model, xj[rel_idx].detach(), [layers[i] for i in rel_idx],
                                  [requests[i].target.index for i in rel_idx], taps)
                syn_rel = {t: _minmax(channels_first(r[t]).float(), -1) for t in taps}
            with capture(model, taps) as acts:
                _forward(model, xj, stop)
            total = torch.zeros(b, device=dev)
            for t, w in zip(taps, tap_w):
                a = channels_first(acts[t]).float()
                if syn_rel is not None:
                    scale = torch.ones(b, a.shape[1], a.shape[2], device=dev)
                    scale[rel_idx] = syn_rel[t]
                    a = a * scale
                total = total + w * sort_matching_loss(a, refs.sorted[t], weights[t] if weights is not None else None,
                                                       n_samples=settings.sort_samples, generator=g_sub)
            total = settings.feat_weight * total
            if settings.tv_l1:
                total = total + settings.tv_l1 * total_variation_l1(xj)
            if settings.tv_l2:
                total = total + settings.tv_l2 * total_variation_l2(xj)
            if settings.l2:
                total = total + settings.l2 * l2_prior(xj)
            return total

        def accumulate(_step: int) -> None:
            if x.grad is not None:
                mask_acc.add_(x.grad.detach().abs().sum(1))

        def report(step: int, losses: torch.Tensor, off=step_offset) -> None:
            if progress is not None:
                progress(off + step, losses)

        warmup = settings.warmup if settings.warmup is not None else max(1, round(0.05 * steps))
        stops = [LossPlateau(window=settings.plateau_patience)] if settings.plateau_patience else []
        hist = optimize(x, loss_fn, steps=steps, lr=settings.lr, warmup=min(warmup, steps), stop_criteria=stops,
                        progress=report, betas=tuple(settings.betas), post_step=lambda: _clip_(x.data),
                        after_backward=accumulate)
        histories.append(hist)
        step_offset += hist.steps_run

    seconds = time.perf_counter() - t_start
    resolved = settings.model_dump(mode="json")
    resolved.update(resolution=res, taps=taps, tap_weights=tap_w, jitter=jitter, steps_run=step_offset,
                    architecture=_architecture(model), device=str(dev), batch=b)
    out = []
    for i, req in enumerate(requests):
        losses = [v for h in histories for v in h.element(i)]
        m = mask_acc[i].detach().float().cpu()
        hi = torch.quantile(m.flatten(), 0.98) if m.numel() else torch.tensor(1.0)
        m = (m.clamp(max=float(hi)) / max(float(hi), 1e-30)).numpy().astype(np.float32)
        out.append(Visualization(
            neuron_id=req.target.neuron_id, method="vital", seed=seed, image=to_uint8_image(x[i]),
            mask=m, loss_history=losses, loop_seconds=sum(h.seconds for h in histories),
            settings={**resolved, "use_relevance": rel[i], "target_layer": layers[i], "index": req.target.index,
                      "n_references": int(req.references.shape[0])},
            seconds=seconds))
    return out


def benchmark_step(model: nn.Module, resolution: int = 224, taps: Sequence[str] | None = None,
                   sort_samples: int | None = 4096, repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Seconds per step: bare forward+backward of the model vs one VITAL (paper form) step."""
    taps = list(taps) if taps else vital_default_taps(model)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, resolution, resolution, generator=g).to(dev).requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad(), capture(model, taps, detach=True) as acts:
            model(torch.randn(4, 3, resolution, resolution, generator=g).to(dev))
        refs = {t: sorted_reference(channels_first(acts[t]).float()).unsqueeze(0) for t in taps}
        if sort_samples:
            refs = {t: resample_sorted(v, min(v.shape[-1], sort_samples)) for t, v in refs.items()}
        order = _execution_order(model, taps, x.detach())
        stop = order[-1]

        def bare():
            model(x).sum().backward()

        def vital_step():
            xj = torch.roll(x, (3, 5), (2, 3))
            with capture(model, taps) as a:
                _forward(model, xj, stop)
            loss = sum(sort_matching_loss(channels_first(a[t]).float(), refs[t], n_samples=sort_samples, generator=g)
                       for t in taps)
            loss.sum().backward()

        out = {}
        for name, fn in (("bare", bare), ("vital", vital_step), ("bare", bare), ("vital", vital_step)):
            fn()
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            out[name] = min(out.get(name, float("inf")), (time.perf_counter() - t0) / repeats)
        out["ratio"] = out["vital"] / out["bare"]
        return out
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
