"""VITAL feature visualization (Görgün, Schiele, Fischer, ICCV 2025), on any timm model.

Starting from noise, an image (in ImageNet-normalized space) is optimized so that, at
several taps, each channel's sorted activation values match the mean of the reference
images' sorted values (`audit.sortmatch`), plus total-variation (L1, L2) and L2 priors;
every step applies a random jitter (`torch.roll`) and, if enabled, a random horizontal
flip; Adam with linear warm-up and cosine decay; pixels are clipped to the valid
normalized range after each step; optional half-resolution warm start. `audit.presets`
holds the authors' settings (`paper`) and the faster default (`fast`).

Two forms:

* class neuron, paper form (``use_relevance=False``): references are real photographs of
  the class; the authors' loss has no class term (`class_weight` 0, `preset: paper`); the
  `fast` preset adds `class_weight` x -log p(class);
* inner neurons and the data-driven class form (``use_relevance=True``): references are
  the neuron's top-activating images; LRP relevance of the target (channel ``index`` at
  ``layer`` spatially summed, or the class logit; `audit.relevance`) weights the features
  at each tap (relevance min-max normalized per channel to [0, 1] and multiplied into the
  activations of the references and, recomputed every step, of the synthetic image) and
  each channel's importance (per-channel max relevance of the references, min-max
  normalized over channels, averaged over references) weights that channel's loss. Taps
  computed after the target carry no relevance and are not read. A transparency mask
  (accumulated |d loss / d image|, clipped at its 98th percentile, scaled to [0, 1]) is
  returned with every image.

Several neurons are optimized together as one batch, and batching changes nothing in the
result: every element has its own noise, augmentation and convergence (drawn from generators
seeded by the run's seed alone, not by the element's position), each tap's position subset is
drawn once per step from a generator of that tap and shared, the losses and priors are per
element, the model is in eval mode, an element that converges is frozen (`audit.optimize`),
and by default each element runs its own forward (`batched_forward`), so an element of a batch
gets the same bytes as the neuron rendered alone (tests/vital/test_vital.py). On CUDA the
default is one batched forward: its kernels sum in another order (~1e-5 apart at the taps),
sort matching pairs near-tied values with other reference quantiles, and the images then only
approximate the single renders.

The model stays where the caller put it: the render runs on the model's own device (or moves
it to ``device`` for the call and back), in eval mode with frozen parameters, and restores
train/eval mode and ``requires_grad`` afterwards.

Cost: see `benchmarks/fv_speed.py`; `benchmark_step` measures the loss step alone.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .contentkeys import ForwardTrace, forward_trace, read_layers, render_taps, vital_default_taps
from .modelstate import frozen_on
from .models import IMAGENET_MEAN, IMAGENET_STD, fast_layout, model_input_size, to_uint8_image
from .optimize import History, LossPlateau, optimize
from .presets import preset as get_preset
from .priors import l2_prior, total_variation_l1, total_variation_l2
from .records import NeuronTarget, Visualization
from .relevance import relevance_pass, tap_relevance
from .sortmatch import resample_sorted, sample_positions, sort_matching_loss, sorted_reference
from .taps import capture, channels_first, final_feature_layer, get_layer, output_layer_name
from .transforms import Compose, Jitter, RandomFlip

__all__ = ["VitalSettings", "VitalRequest", "render_vital", "register_family_defaults", "family_defaults",
           "vital_default_taps", "benchmark_step"]


class VitalSettings(BaseModel):
    """Settings of one VITAL run. `for_model` applies a preset and the per-family defaults;
    `resolved` fills every value the render derives from the model, so that the content key
    (`audit.contentkeys`) and the render read the same values."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "fast"                                           # the preset these values came from (a record)
    resolution: int | None = Field(default=None, ge=16, le=1024)   # None: the model's input size
    steps: int = Field(default=400, ge=1)
    lr: float = Field(default=0.25, gt=0)
    warmup: int | None = Field(default=None, ge=0)                 # None: 5 % of the steps
    betas: tuple[float, float] = (0.5, 0.9)
    feat_weight: float = 1.0
    tv_l1: float = 0.0
    tv_l2: float = 0.0
    l2: float = 0.0
    inner_tv_l2: float | None = None                               # relevance form; None: tv_l2
    inner_l2: float | None = None                                  # relevance form; None: l2
    jitter: int | None = Field(default=None, ge=0)                 # None: 30 px scaled with resolution/224
    flip: bool = True
    tap_set: Literal["vital", "paper"] = "vital"                   # used when taps is None
    taps: list[str] | None = None                                  # None: the tap set's taps for the model
    tap_weights: list[float] | None = None                         # None: 1 per tap, final_tap_weight below
    # Weight of the feature map the classifier pools (EfficientNet's bn2), when tap_weights is None. The
    # logits are linear in that map's spatial mean, so matching it is what makes the class recognisable.
    final_tap_weight: float = Field(default=1.0, gt=0)
    inner_tap_weights: list[float] | None = None                   # relevance form; None: tap_weights
    # Class neurons in the paper form (photographs as references): weight of -log p(class) beside the
    # sort-matching loss. It saturates once the model gives the class, so it pulls the image to the class
    # where the references are weak and leaves the matching alone where they are not. 0: the authors' loss.
    class_weight: float = Field(default=0.0, ge=0)
    # Inner neurons: weight of the channel's own spatial-mean activation (divided by its mean spatial max
    # over the references) beside the sort-matching loss, maximized. 0: the authors' loss.
    inner_activation_weight: float = Field(default=0.0, ge=0)
    half_res_warm_start: bool = False                              # first half of the steps at half resolution
    use_relevance: bool | None = None                              # default for requests that leave it None
    sort_samples: int | None = Field(default=4096, ge=16)          # None: sort every position
    plateau_patience: int | None = Field(default=None, ge=1)       # stop an element on a loss plateau (window)
    plateau_tol: float = Field(default=1e-3, ge=0)                 # relative improvement that counts as progress
    plateau_min_steps: int = Field(default=100, ge=0)
    # One forward for the whole batch (None: on CUDA only). Batched kernels sum in another order
    # (~1e-5 apart at the taps), and sort matching turns such differences into other rank pairings,
    # so a batched element then only approximates the same neuron rendered alone; one forward per
    # element is bit-identical to rendering alone and, on CPU, measured no slower (Lite0, 224 px).
    batched_forward: bool | None = None

    @classmethod
    def for_model(cls, model: nn.Module | str, preset: str = "fast", **overrides: Any) -> "VitalSettings":
        """The preset's values, then the architecture family's (authors' per-architecture configs),
        then `overrides`."""
        arch = model if isinstance(model, str) else _architecture(model)
        return cls(**{**get_preset(preset).settings, "preset": preset, **family_defaults(arch), **overrides})

    def resolved(self, model: nn.Module) -> "VitalSettings":
        """A copy with resolution, taps, tap weights (both forms), jitter, warm-up and the
        relevance form's priors filled in for `model`; a resolved copy resolves to itself."""
        res = self.resolution or model_input_size(model)
        taps = render_taps(model, self.taps, self.tap_set)
        weights = (list(self.tap_weights) if self.tap_weights
                   else _default_tap_weights(model, taps, self.final_tap_weight))
        inner = list(self.inner_tap_weights) if self.inner_tap_weights else list(weights)
        for name, w in (("tap_weights", weights), ("inner_tap_weights", inner)):
            if len(w) != len(taps):
                raise ValueError(f"{len(w)} {name} for {len(taps)} taps ({taps})")
        return self.model_copy(update=dict(
            resolution=res, taps=taps, tap_weights=[float(w) for w in weights],
            inner_tap_weights=[float(w) for w in inner],
            jitter=self.jitter if self.jitter is not None else round(30 * res / 224),
            warmup=self.warmup if self.warmup is not None else max(1, round(0.05 * self.steps)),
            inner_tv_l2=self.tv_l2 if self.inner_tv_l2 is None else self.inner_tv_l2,
            inner_l2=self.l2 if self.inner_l2 is None else self.inner_l2))

    def weights_for(self, use_relevance: bool) -> list[float]:
        """Tap weights of a neuron in the given form (resolved settings)."""
        return list(self.inner_tap_weights if use_relevance else self.tap_weights)

    def priors_for(self, use_relevance: bool) -> tuple[float, float, float]:
        """(tv_l1, tv_l2, l2) of a neuron in the given form (resolved settings)."""
        return (self.tv_l1, self.inner_tv_l2 if use_relevance else self.tv_l2,
                self.inner_l2 if use_relevance else self.l2)


def _default_tap_weights(model: nn.Module, taps: list[str], final_weight: float) -> list[float]:
    """1 per tap, and `final_weight` on the feature map the classifier pools when it is a tap."""
    final = final_feature_layer(model)
    return [float(final_weight) if t == final else 1.0 for t in taps]


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


# Per-family values from the authors' configs (class_fvis/utils/config.py): ViT priors, ConvNeXt stem weight.
register_family_defaults("vit", tv_l2=0.003, l2=0.003)
register_family_defaults("deit", tv_l2=0.003, l2=0.003)
register_family_defaults("convnext", tap_weights=[10, 1, 1, 1, 1])


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


def resolve_target_layer(model: nn.Module, target: NeuronTarget) -> str:
    """The layer whose output holds the target (class neurons: the classifier)."""
    if target.kind == "class" and target.layer in ("", "logits", "head"):
        return output_layer_name(model)
    return target.layer


def request_uses_relevance(request: VitalRequest, settings: VitalSettings) -> bool:
    if request.use_relevance is not None:
        return bool(request.use_relevance)
    if settings.use_relevance is not None:
        return bool(settings.use_relevance)
    return request.target.kind == "inner"


def reads_class_term(request: VitalRequest, settings: VitalSettings) -> bool:
    """A class neuron in the paper form whose loss has the class term (`class_weight`)."""
    return (settings.class_weight > 0 and request.target.kind == "class"
            and not request_uses_relevance(request, settings))


def reads_activation_term(request: VitalRequest, settings: VitalSettings) -> bool:
    """An inner neuron whose loss has its channel's own activation (`inner_activation_weight`)."""
    return settings.inner_activation_weight > 0 and request.target.kind == "inner"


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

    handle = None
    try:
        handle = get_layer(model, name).register_forward_hook(hook)
        yield
    finally:
        if handle is not None:
            handle.remove()


def _forward(model: nn.Module, x: torch.Tensor, stop: str | None) -> torch.Tensor | None:
    """model(x), stopped after layer `stop` (then None)."""
    with _stop_after(model, stop):
        try:
            return model(fast_layout(x))
        except _StopForward:
            return None


def _minmax(t: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    t = t - t.amin(dim, keepdim=True)
    return t / (t.amax(dim, keepdim=True) + 1e-6)


def _clip_(x: torch.Tensor) -> None:
    for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        x[:, c].clamp_(-m / s, (1 - m) / s)


# ----------------------------------------------------------------------------------------------- phase 1: plan


@dataclass
class _Plan:
    """Everything the optimization reads, decided before it starts."""

    settings: VitalSettings                # resolved
    res: int
    taps: list[str]                        # the taps some element reads, in execution order
    stop: str | None                       # the forward stops after this layer
    rel: list[bool]                        # per element: relevance form?
    layers: list[str]                      # per element: the target layer
    tap_weight: torch.Tensor               # [B, T]: 0 where an element does not read a tap
    priors: torch.Tensor                   # [B, 3]: tv_l1, tv_l2, l2 per element
    phases: list[tuple[int, int]]          # (average-pool factor, steps)
    tap_seed: dict[str, int]               # each tap's own subsampling seed offset
    batched: bool                          # one forward for the batch (else one per element)
    trace: ForwardTrace | None = None      # where each layer ends in the forward
    class_term: torch.Tensor | None = None       # [B] weight of -log p(class) (0: not read)
    activation_term: torch.Tensor | None = None  # [B] weight of the target channel's activation (0: not read)

    def target_terms(self, group: list[int]) -> tuple[list[int], list[int]]:
        """Positions in `group` of the elements whose loss reads the logits / their target channel."""
        return ([k for k, i in enumerate(group) if float(self.class_term[i]) != 0],
                [k for k, i in enumerate(group) if float(self.activation_term[i]) != 0])


def _plan(model: nn.Module, requests: Sequence[VitalRequest], settings: VitalSettings, dev: torch.device) -> _Plan:
    """Which taps each element reads and with what weight, where the forward can stop, and the phases."""
    s = settings
    rel = [request_uses_relevance(r, s) for r in requests]
    layers = [resolve_target_layer(model, r.target) for r in requests]
    for layer in layers:
        get_layer(model, layer)
    trace: ForwardTrace = forward_trace(model, s.resolution)
    read = [set(read_layers(trace, s.taps, s.weights_for(r), layer, r)) for r, layer in zip(rel, layers)]
    used = sorted({t for t in s.taps if any(t in rd for rd in read)}, key=lambda t: trace.end_of(t))
    weight = torch.zeros(len(requests), len(used), device=dev)
    for i, (r, rd) in enumerate(zip(rel, read)):
        for j, t in enumerate(used):
            if t in rd:
                weight[i, j] = s.weights_for(r)[s.taps.index(t)]
    priors = torch.tensor([s.priors_for(r) for r in rel], dtype=torch.float32, device=dev)
    phases = [(1, s.steps)]
    if s.half_res_warm_start and s.steps >= 2:
        phases = [(2, s.steps // 2), (1, s.steps - s.steps // 2)]
    batched = s.batched_forward if s.batched_forward is not None else dev.type == "cuda"
    class_term = torch.tensor([s.class_weight if reads_class_term(r, s) else 0.0 for r in requests], device=dev)
    activation_term = torch.tensor([s.inner_activation_weight if reads_activation_term(r, s) else 0.0
                                    for r in requests], device=dev)
    return _Plan(settings=s, res=s.resolution, taps=used, stop=used[-1] if used else None, rel=rel, layers=layers,
                 tap_weight=weight, priors=priors, phases=phases, tap_seed={t: 2 + k for k, t in enumerate(s.taps)},
                 batched=batched, trace=trace, class_term=class_term, activation_term=activation_term)


# ---------------------------------------------------------------------------------- phase 2: reference targets


@dataclass
class _ReferenceTargets:
    sorted: dict[str, torch.Tensor]            # tap -> [B, C, N] mean sorted reference values
    channel_weight: dict[str, torch.Tensor]    # tap -> [B, C] (ones for elements without relevance)
    activation_scale: torch.Tensor | None = None   # [B] references' mean spatial max of the target channel


def _reference_targets(model: nn.Module, requests: Sequence[VitalRequest], plan: _Plan, pool: int,
                       dev: torch.device, chunk: int = 8) -> _ReferenceTargets:
    """What each element's features are matched to, at the phase's resolution: per tap the mean of
    the references' sorted values (relevance-weighted in the relevance form), and the per-channel
    importance; computed once per phase, subsampled to `sort_samples` quantiles when set."""
    taps = plan.taps
    sorted_by_tap: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    weight_by_tap: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    for req, use_rel, layer in zip(requests, plan.rel, plan.layers):
        refs = req.references.to(device=dev, dtype=torch.float32)
        if refs.shape[-1] != plan.res or refs.shape[-2] != plan.res:
            refs = F.interpolate(refs, size=(plan.res, plan.res), mode="bilinear", antialias=True, align_corners=False)
        if pool > 1:
            refs = F.avg_pool2d(refs, pool)
        sums: dict[str, torch.Tensor] = {}
        imps: dict[str, torch.Tensor] = {}
        for i in range(0, refs.shape[0], chunk):
            part = refs[i:i + chunk]
            with torch.no_grad(), capture(model, list(taps), detach=True) as acts:
                _forward(model, part, plan.stop)
            feats = {t: channels_first(acts[t]).float() for t in taps}
            if use_rel:
                r = tap_relevance(model, part, layer, req.target.index, taps)
                for t in taps:
                    rt = channels_first(r[t]).float()
                    feats[t] = feats[t] * _minmax(rt, -1)
                    imps[t] = imps.get(t, 0) + _minmax(rt.amax(-1), -1).sum(0)      # [C]
            for t in taps:
                sums[t] = sums.get(t, 0) + sorted_reference(feats[t]) * part.shape[0]
        n_ref = refs.shape[0]
        for t in taps:
            sorted_by_tap[t].append(sums[t] / n_ref)
            weight_by_tap[t].append(imps[t] / n_ref if use_rel else torch.ones(sums[t].shape[0], device=dev))
    srt = {t: torch.stack(v) for t, v in sorted_by_tap.items()}
    n = plan.settings.sort_samples
    if n:
        srt = {t: resample_sorted(v, min(v.shape[-1], n)) for t, v in srt.items()}
    scale = torch.ones(len(requests), device=dev)
    for i in range(len(requests)):
        if float(plan.activation_term[i]) != 0:
            scale[i] = _reference_channel_peak(model, requests[i], plan.layers[i], plan.res, pool, dev, chunk)
    return _ReferenceTargets(srt, {t: torch.stack(v) for t, v in weight_by_tap.items()}, scale)


def _reference_channel_peak(model: nn.Module, req: VitalRequest, layer: str, res: int, pool: int,
                            dev: torch.device, chunk: int) -> float:
    """The references' mean spatial max of the target channel (at least 1e-3): the scale that makes
    the activation term comparable across channels and layers."""
    refs = req.references.to(device=dev, dtype=torch.float32)
    if refs.shape[-1] != res or refs.shape[-2] != res:
        refs = F.interpolate(refs, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    if pool > 1:
        refs = F.avg_pool2d(refs, pool)
    peaks = []
    for i in range(0, refs.shape[0], chunk):
        with torch.no_grad(), capture(model, [layer], detach=True) as acts:
            _forward(model, refs[i:i + chunk], layer)
        peaks.append(channels_first(acts[layer])[:, req.target.index].float().amax(-1))
    return max(float(torch.cat(peaks).mean()), 1e-3)


# ------------------------------------------------------------------------------------ phase 3: synthetic images


@dataclass
class _Synthetic:
    x: torch.Tensor                  # [B, 3, S, S] the optimized images (normalized space)
    augment: list[Compose]           # per element, seeded by the run's seed
    tap_generators: dict[str, torch.Generator]
    mask: torch.Tensor               # [B, S, S] accumulated |gradient|


def _synthetic(plan: _Plan, b: int, seed: int, dev: torch.device) -> _Synthetic:
    """Noise start and augmentation generators: element i's draws depend on the seed only."""
    res = plan.res
    noise = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(seed))
    x = noise.expand(b, -1, -1, -1).contiguous().to(dev).requires_grad_(True)
    return _Synthetic(x=x, augment=[], tap_generators={t: torch.Generator().manual_seed(seed + k)
                                                       for t, k in plan.tap_seed.items()},
                      mask=torch.zeros(b, res, res, device=dev))


def _augmenters(plan: _Plan, b: int, seed: int, pool: int) -> list[Compose]:
    """Per element: jitter (and flip when on), each from its own generator seeded with seed + 1."""
    out = []
    for _ in range(b):
        g = torch.Generator().manual_seed(seed + 1)
        out.append(Compose([Jitter(plan.settings.jitter // pool, generator=g)] +
                           ([RandomFlip(0.5, generator=g)] if plan.settings.flip else [])))
    return out


# ------------------------------------------------------------------------------------------- phase 4: the loss


@dataclass
class _GroupForward:
    feats: dict[str, torch.Tensor]         # tap -> [g, C, N], relevance-weighted in the relevance form
    logits: torch.Tensor | None            # [g, classes] when an element reads the class term
    target: dict[int, torch.Tensor]        # position in group -> [N] its target channel (activation term)


def _tap_features(model: nn.Module, xj: torch.Tensor, requests: Sequence[VitalRequest], plan: _Plan,
                  group: list[int], taps: list[str]) -> _GroupForward:
    """Activations [g, C, N] of the group's elements at `taps`, multiplied in the relevance form by the
    min-max normalized relevance of each element's target; and what the target terms read: the logits
    (the forward then runs to the end) and each activation-term element's target channel (the forward
    then runs at least to its layer). Otherwise the forward stops after the last tap.

    One forward serves the loss and, when some element is in the relevance form, its relevance
    (`audit.relevance.relevance_pass`: the LRP backward runs inside the pass, the loss's backward
    afterwards gets the true gradient), instead of a separate relevance forward per step."""
    rel_pos = [k for k, i in enumerate(group) if plan.rel[i]]
    class_pos, act_pos = plan.target_terms(group)
    extra = [plan.layers[group[k]] for k in act_pos]
    layers = list(dict.fromkeys(list(taps) + extra))
    rel_layers = [plan.layers[group[k]] for k in rel_pos]
    deepest = max(layers + rel_layers, key=lambda t: plan.trace.end_of(t))
    stop = None if class_pos else (deepest if extra or rel_pos else taps[-1])
    syn_rel = None
    if rel_pos:
        with relevance_pass(model, layers, rel_layers) as rp:
            logits = _forward(model, xj, stop)
            r = rp.relevance(rel_layers, [requests[group[k]].target.index for k in rel_pos], rows=rel_pos)
            acts = rp.activations
        syn_rel = {t: _minmax(channels_first(r[t]).float(), -1) for t in taps}
    else:
        with capture(model, layers) as captured:
            logits = _forward(model, xj, stop)
        acts = {t: captured[t] for t in layers}
    feats = {}
    for t in taps:
        a = channels_first(acts[t]).float()
        if syn_rel is not None:
            scale = torch.ones_like(a)
            scale[rel_pos] = syn_rel[t]
            a = a * scale
        feats[t] = a
    target = {k: channels_first(acts[plan.layers[group[k]]])[k, requests[group[k]].target.index].float()
              for k in act_pos}
    return _GroupForward(feats, logits if class_pos else None, target)


def _target_terms(fwd: _GroupForward, requests: Sequence[VitalRequest], plan: _Plan, refs: _ReferenceTargets,
                  group: list[int]) -> torch.Tensor:
    """[g] the class term (weight x -log p(class)) and the activation term (-weight x the target
    channel's spatial mean / the references' mean spatial max) of the group's elements."""
    class_pos, act_pos = plan.target_terms(group)
    logp = F.log_softmax(fwd.logits.float(), dim=-1) if class_pos else None
    terms = []
    for k, i in enumerate(group):
        term = plan.class_term.new_zeros(())
        if k in class_pos:
            term = term - plan.class_term[i] * logp[k, requests[i].target.index]
        if k in act_pos:
            term = term - plan.activation_term[i] * fwd.target[k].mean() / refs.activation_scale[i]
        terms.append(term)
    return torch.stack(terms)


def _loss_function(model: nn.Module, requests: Sequence[VitalRequest], plan: _Plan, refs: _ReferenceTargets,
                   syn: _Synthetic, pool: int) -> Callable[[int], torch.Tensor]:
    """loss(step) -> [B]: augment each element, compute its tap features (relevance-weighted in the
    relevance form), and sum per element the weighted sort-matching losses of the taps it reads and
    its priors. Each tap's position subset is drawn once per step and shared by the elements. With
    `plan.batched` one forward serves the whole batch; otherwise each element runs its own forward
    up to its own last tap (bit-identical to rendering it alone)."""
    s = plan.settings
    b = len(requests)
    groups = [list(range(b))] if plan.batched else [[i] for i in range(b)]
    group_taps = [[t for j, t in enumerate(plan.taps) if bool((plan.tap_weight[g, j] != 0).any())] for g in groups]

    def loss(_step: int) -> torch.Tensor:
        xin = F.avg_pool2d(syn.x, pool) if pool > 1 else syn.x
        xj = torch.cat([aug(xin[i:i + 1]) for i, aug in enumerate(syn.augment)])
        positions: dict[str, torch.Tensor | None] = {}
        parts = []
        for group, taps in zip(groups, group_taps):
            xg = xj if len(group) == b else xj[group]
            total = torch.zeros(len(group), device=xj.device)
            if taps:
                fwd = _tap_features(model, xg, requests, plan, group, taps)
                for t in taps:
                    a = fwd.feats[t]
                    if t not in positions:
                        positions[t] = sample_positions(a.shape[-1], s.sort_samples, syn.tap_generators[t])
                    j = plan.taps.index(t)
                    total = total + plan.tap_weight[group, j] * sort_matching_loss(
                        a, refs.sorted[t][group], refs.channel_weight[t][group], positions=positions[t])
            total = s.feat_weight * total
            if taps:
                total = total + _target_terms(fwd, requests, plan, refs, group)
            p = plan.priors[group]
            if bool((p[:, 0] != 0).any()):
                total = total + p[:, 0] * total_variation_l1(xg)
            if bool((p[:, 1] != 0).any()):
                total = total + p[:, 1] * total_variation_l2(xg)
            if bool((p[:, 2] != 0).any()):
                total = total + p[:, 2] * l2_prior(xg)
            parts.append(total)
        return torch.cat(parts)

    return loss


# -------------------------------------------------------------------------------------- phase 5: optimization


def _optimize_phase(plan: _Plan, syn: _Synthetic, loss: Callable[[int], torch.Tensor], steps: int,
                    step_offset: int, progress) -> History:
    """Adam with warm-up + cosine decay over the phase's steps, pixels clipped after each step,
    the transparency mask accumulated, each element stopped on its own loss plateau when enabled."""
    s = plan.settings

    def accumulate(_step: int) -> None:
        if syn.x.grad is not None:
            syn.mask.add_(syn.x.grad.detach().abs().sum(1))

    def report(step: int, losses: torch.Tensor) -> None:
        if progress is not None:
            progress(step_offset + step, losses)

    stops = ([LossPlateau(window=s.plateau_patience, rel_tol=s.plateau_tol, min_steps=s.plateau_min_steps)]
             if s.plateau_patience else [])
    return optimize(syn.x, loss, steps=steps, lr=s.lr, warmup=min(s.warmup, steps), stop_criteria=stops,
                    progress=report, betas=tuple(s.betas), post_step=lambda: _clip_(syn.x.data),
                    after_backward=accumulate)


# -------------------------------------------------------------------------------------------- phase 6: output


def _visualizations(model: nn.Module, requests: Sequence[VitalRequest], plan: _Plan, syn: _Synthetic,
                    histories: list[History], seed: int, dev: torch.device, t_start: float) -> list[Visualization]:
    seconds = time.perf_counter() - t_start
    base = plan.settings.model_dump(mode="json")
    base.update(architecture=_architecture(model), device=str(dev), batch=len(requests))
    out = []
    for i, req in enumerate(requests):
        losses = [v for h in histories for v in h.element(i)]
        m = syn.mask[i].detach().float().cpu()
        hi = torch.quantile(m.flatten(), 0.98) if m.numel() else torch.tensor(1.0)
        m = (m.clamp(max=float(hi)) / max(float(hi), 1e-30)).numpy().astype(np.float32)
        read = [t for j, t in enumerate(plan.taps) if float(plan.tap_weight[i, j]) != 0]
        out.append(Visualization(
            neuron_id=req.target.neuron_id, method="vital", seed=seed, image=to_uint8_image(syn.x[i]),
            mask=m, loss_history=losses, loop_seconds=sum(h.seconds for h in histories),
            settings={**base, "use_relevance": plan.rel[i], "target_layer": plan.layers[i],
                      "index": req.target.index, "n_references": int(req.references.shape[0]),
                      "read_taps": read, "steps_run": len(losses),
                      "stopped_early": len(losses) < plan.settings.steps},
            seconds=seconds))
    return out


def _render(model: nn.Module, requests: list[VitalRequest], settings: VitalSettings, seed: int, dev: torch.device,
            progress, t_start: float) -> list[Visualization]:
    """The phases of one render: plan, then per resolution phase the reference targets, the loss and
    the optimization, then the images, masks and the settings that were used."""
    plan = _plan(model, requests, settings, dev)
    syn = _synthetic(plan, len(requests), seed, dev)
    histories: list[History] = []
    step_offset = 0
    for pool, steps in plan.phases:
        refs = _reference_targets(model, requests, plan, pool, dev)
        syn.augment = _augmenters(plan, len(requests), seed, pool)
        loss = _loss_function(model, requests, plan, refs, syn, pool)
        hist = _optimize_phase(plan, syn, loss, steps, step_offset, progress)
        histories.append(hist)
        step_offset += hist.steps_run
    return _visualizations(model, requests, plan, syn, histories, seed, dev, t_start)


def render_vital(model: nn.Module, requests: Sequence[VitalRequest], settings: VitalSettings | None = None,
                 seed: int = 0, device: str | torch.device | None = None,
                 progress: Callable[[int, torch.Tensor], None] | None = None) -> list[Visualization]:
    """Render the requested neurons together (one batch element each); one Visualization per request.

    Seeded: the noise, jitter, flips and position subsets come from explicit generators, so the
    same seed on the same machine gives the same bytes. Runs on the model's device unless
    `device` names another (the model is then moved there for the call and back). The model is
    put in eval mode with frozen parameters for the run and restored afterwards.
    """
    if not requests:
        return []
    settings = (settings or VitalSettings.for_model(model)).resolved(model)
    t_start = time.perf_counter()
    with frozen_on(model, device) as dev:
        return _render(model, list(requests), settings, seed, dev, progress, t_start)


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
        trace = forward_trace(model, resolution)
        stop = max(taps, key=lambda t: trace.end_of(t))

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
