"""The evidence registry: every kind of drift evidence, registered by name with its distance, its
title and its sentence (in the style of timm's model registry and Zennit's named rules).

A kind is one function `Columns -> [M] distances` (0 when the versions agree, larger when the
neuron changed; nan where undefined), registered with `register_evidence`. The benign null
(audit.drift.null) and the compare (audit.drift.compare) both measure every registered kind
through `measure`, on the same columns, so a new kind needs nothing else: the null tables it,
the compare judges it against its null bound with a share of the false-alarm rate, the report
carries it under its title and the reason uses its sentence. Adding one:

    @register_evidence("median", title="median response",
                       sentence=lambda e, c, names: f"its median moved by {e.value:.2f} sigma")
    def median_shift(cols: Columns) -> np.ndarray:
        return np.abs(np.median(cols.b, 0) - np.median(cols.a, 0)) / cols.a.std(0, ddof=1)

and its test. The built-in kinds are registered below, in the order reports list them; what each
measures is the docstring of audit.drift.statistics.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..stats import LayerActivations
from .columns import audited_values, mean_audited
from .statistics import (DISTANCES_VERSION, content_distance, magnitude_distance, margin_distance, partner_distance,
                         rank_distance, retention_distance, spatial_distance, top_columns)

if TYPE_CHECKING:
    from .evidence import Evidence, NeuronComparison

INPUTS = ("features", "grid", "logits")     # what a kind may need beyond the two versions' values


@dataclass(frozen=True)
class Columns:
    """What a distance reads: M columns of the baseline layer (`columns`) and their candidate values.

    The null passes every channel of a layer against a benign variant (M = C); the compare passes
    the registered neuron against the candidate's column that holds it (M = 1). Values are each
    channel's audited statistic (audit.drift.columns)."""
    a: np.ndarray                          # [N, M] baseline values
    b: np.ndarray                          # [N, M] candidate values
    k: int                                 # top-k images
    layer_a: np.ndarray                    # [N, C] the baseline's whole layer
    columns: np.ndarray                    # [M] each column's index in layer_a
    features: np.ndarray | None = None     # [N, D] normalized content features of the probe images
    grid_a: np.ndarray | None = None       # [N, M, G] pooled maps of the columns, baseline
    grid_b: np.ndarray | None = None       # candidate
    logits_a: np.ndarray | None = None     # [N, C] the whole head's values (class margins), baseline
    logits_b: np.ndarray | None = None     # candidate

    @cached_property
    def top_a(self) -> np.ndarray:
        """[k, M] each column's top-k images in the baseline."""
        return top_columns(self.a, self.k)

    @cached_property
    def top_b(self) -> np.ndarray:
        return top_columns(self.b, self.k)

    def has(self, need: str) -> bool:
        if need == "features":
            return self.features is not None
        if need == "grid":
            return self.grid_a is not None and self.grid_b is not None
        if need == "logits":
            return self.logits_a is not None and self.logits_b is not None
        raise ValueError(f"unknown evidence input {need!r}; known: {', '.join(INPUTS)}")


# (evidence, the neuron's comparison, class index -> name) -> the reason's sentence ("": none)
Sentence = Callable[["Evidence", "NeuronComparison", dict], str]


@dataclass(frozen=True)
class EvidenceKind:
    """One registered kind of evidence."""
    name: str
    distance: Callable[[Columns], np.ndarray]
    title: str                                      # what the report and the evidence card call it
    sentence: Sentence | None = None                # the reason's sentence when it is beyond its bound
    needs: tuple[str, ...] = ()                     # INPUTS it reads; without them it does not apply
    own: bool = True                                # about the neuron's own response (not about other units)
    undefined: str = "its distance is undefined on these values"   # why it can be nan for one neuron
    statistic: str | None = None                    # the report's flat statistic that carries it
    report: Callable[[float], float] = field(default=lambda v: v)  # distance -> that statistic
    version: str = "1"                              # bump when the distance changes (the null's cache key)


_REGISTRY: dict[str, EvidenceKind] = {}


def register_evidence(name: str, *, title: str, sentence: Sentence | None = None, needs: tuple[str, ...] = (),
                      own: bool = True, undefined: str | None = None, statistic: str | None = None,
                      report: Callable[[float], float] | None = None, version: str = "1"):
    """Decorator: register `fn(columns) -> [M] distances` as the evidence kind `name` (see the module
    docstring). Registering a name again replaces it."""
    unknown = [n for n in needs if n not in INPUTS]
    if unknown:
        raise ValueError(f"evidence {name!r}: unknown needs {unknown}; known: {', '.join(INPUTS)}")

    def wrap(fn: Callable[[Columns], np.ndarray]) -> Callable[[Columns], np.ndarray]:
        extra: dict[str, Any] = {}
        if undefined is not None:
            extra["undefined"] = undefined
        if report is not None:
            extra["report"] = report
        _REGISTRY[name] = EvidenceKind(name, fn, title, sentence, tuple(needs), own, statistic=statistic,
                                       version=version, **extra)
        return fn
    return wrap


def unregister_evidence(name: str) -> None:
    """Remove a registered kind (a test's or a plugin's)."""
    _REGISTRY.pop(name, None)


def evidence_kinds() -> tuple[EvidenceKind, ...]:
    """The registered kinds, in registration order."""
    return tuple(_REGISTRY.values())


def evidence_kind(name: str) -> EvidenceKind | None:
    return _REGISTRY.get(name)


def kind_names(own_only: bool = False) -> tuple[str, ...]:
    return tuple(k.name for k in _REGISTRY.values() if k.own or not own_only)


def title(name: str) -> str:
    kind = _REGISTRY.get(name)
    return kind.title if kind is not None else name


def distances_key() -> str:
    """What the null's tables measure: the distance definitions and the registered kinds (a cache key)."""
    return DISTANCES_VERSION + ":" + ",".join(f"{k.name}@{k.version}" for k in _REGISTRY.values())


def measure(cols: Columns) -> dict[str, np.ndarray]:
    """kind -> [M] distances of every registered kind whose inputs `cols` holds."""
    out = {}
    for kind in _REGISTRY.values():
        if all(cols.has(n) for n in kind.needs):
            out[kind.name] = np.asarray(kind.distance(cols), float)
    return out


def layer_columns(base: LayerActivations, variant: LayerActivations, k: int, features: np.ndarray | None,
                  is_head: bool) -> Columns:
    """Every channel of one layer against a benign variant (the null's columns)."""
    use_mean = mean_audited(base)
    a = audited_values(base, use_mean).astype(float)
    return Columns(a, audited_values(variant, use_mean).astype(float), k, a, np.arange(a.shape[1]), features,
                   base.grid, variant.grid, base.mean if is_head else None, variant.mean if is_head else None)


# ---------------------------------------------------------------- the reason's sentences
def interval(c: "NeuronComparison", key: str) -> str:
    """' [low, high]' of a statistic's photograph interval, or '' when there is none."""
    v = c.ci.get(key)
    if not v or any(x != x for x in v):
        return ""
    return f" [{v[0]:.2f}, {v[1]:.2f}]"


def _unit(c: "NeuronComparison") -> str:
    return "logit" if c.target.kind == "class" else "channel"


def _classes(counts: dict[int, int], names: dict[int, str], limit: int = 2) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{names.get(int(c), 'logit')} (logit {int(c)})" if int(c) in names else f"logit {int(c)}"
                     for c, _ in items)


def argmax_sentence(c: "NeuronComparison", class_names: dict[int, str]) -> str:
    """Where a class neuron lost or gained the top-1 prediction, and to or from which classes."""
    am = c.argmax
    parts = []
    if am.lost:
        where = f" ({', '.join(am.lost_photos[:2])})" if am.lost_photos else ""
        parts.append(f"no longer the top-1 class on {am.lost} probe images{where}, now "
                     f"{_classes(am.lost_to, class_names)}")
    if am.gained:
        where = f" ({', '.join(am.gained_photos[:2])})" if am.gained_photos else ""
        parts.append(f"now the top-1 class on {am.gained} probe images{where}, previously "
                     f"{_classes(am.gained_from, class_names)}")
    return "; ".join(parts)


def _rank_sentence(e, c, names) -> str:
    return (f"{_unit(c)} ranks the probe images differently: Spearman {c.statistics['spearman']:.2f}"
            f"{interval(c, 'spearman')} over photographs; benign re-saves keep it above {1 - e.null_limit:.3f}")


def _retention_sentence(e, c, names) -> str:
    tk = c.topk
    if tk is None:
        return ""
    if tk.retention_ab <= tk.retention_ba:
        return (f"stopped firing on its own top images: under the candidate they rank at retention "
                f"{tk.retention_ab:.2f} (1 = still its top, 0 = random)")
    return (f"its new top images were not its top before: retention {tk.retention_ba:.2f} under the baseline "
            f"(1 = were its top, 0 = random)")


def _magnitude_sentence(e, c, names) -> str:
    st = c.statistics
    return (f"activation magnitude shifted: W/sigma {st['wasserstein_norm']:.2f}{interval(c, 'wasserstein_norm')} "
            f"(mean {st['mean_a']:.2f} -> {st['mean_b']:.2f}, std {st['std_a']:.2f} -> {st['std_b']:.2f}); "
            f"benign re-saves stay below {e.null_limit:.2f}")


def _content_sentence(e, c, names) -> str:
    tk = c.topk
    if tk is None:
        return ""
    p = f", permutation p {tk.content_p_value:.3f}" if tk.content_p_value is not None else ""
    return f"its top images show other content: centroid shift {e.value:.2f} (1 = as different as two random sets){p}"


def _spatial_sentence(e, c, names) -> str:
    return (f"fires in other places on its top images: map agreement {1 - e.value:.2f}; "
            f"benign re-saves keep it above {1 - e.null_limit:.2f}")


def _margin_sentence(e, c, names) -> str:
    if c.argmax is None:
        return ""
    return argmax_sentence(c, names) or f"top-1 margin moved by {e.value:.2f} sigma"


def _partner_sentence(e, c, names) -> str:
    if c.partner is None:
        return ""
    unit = (f"{names[c.partner]} (logit {c.partner})" if c.target.kind == "class" and c.partner in names
            else f"{_unit(c)} {c.partner}")
    return (f"now also responds like {unit}: a component of {e.value:.2f} of its std follows it "
            f"(benign re-saves stay below {e.null_limit:.2f})")


# ---------------------------------------------------------------- the built-in kinds
_CONSTANT = "its values are constant on the probe set in one version"

register_evidence("rank", title="ranking of the probe images", sentence=_rank_sentence, undefined=_CONSTANT)(
    lambda cols: rank_distance(cols.a, cols.b))
register_evidence("retention", title="response on its own top images", sentence=_retention_sentence,
                  undefined=_CONSTANT)(lambda cols: retention_distance(cols.a, cols.b, cols.k))
register_evidence("magnitude", title="activation magnitude", sentence=_magnitude_sentence, undefined=_CONSTANT)(
    lambda cols: magnitude_distance(cols.a, cols.b))
register_evidence("content", title="content of the top images", sentence=_content_sentence, needs=("features",),
                  statistic="content_shift", undefined="its top images could not be placed in the content space")(
    lambda cols: content_distance(cols.top_a, cols.top_b, cols.features))
register_evidence("spatial", title="where it fires", sentence=_spatial_sentence, needs=("grid",),
                  statistic="spatial_agreement", report=lambda v: 1 - v,
                  undefined="fewer than two of its top images have a map that varies in both versions "
                            "(it fires uniformly)")(
    lambda cols: spatial_distance(cols.grid_a, cols.grid_b, cols.top_a, cols.top_b))
register_evidence("margin", title="top-1 margin against other classes", sentence=_margin_sentence, needs=("logits",),
                  own=False, statistic="margin_shift",
                  undefined="it is the top-1 class on no probe image in either version")(
    lambda cols: margin_distance(cols.logits_a, cols.logits_b)[cols.columns])
register_evidence("partner", title="now also responds like another unit", sentence=_partner_sentence,
                  statistic="partner_component", undefined="the change could not be related to the other units")(
    lambda cols: partner_distance(cols.layer_a, cols.b, cols.columns)[0])
