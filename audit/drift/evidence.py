"""Typed evidence of one neuron's comparison: what was measured, against which bound, and what
a person can look at. `NeuronComparison` gathers them; audit.drift.verdicts turns them into a
verdict and a reason."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from ..records import NeuronTarget
from .identity import IdentityMatch
from .null import LayerNull
from .evidence_kinds import evidence_kind, evidence_kinds, kind_names, title

Level = Literal["fail", "warn", "none"]



def __getattr__(name: str):
    """`EVIDENCE_TITLES`: kind -> title of the registered kinds, kept importable from here for one release."""
    if name == "EVIDENCE_TITLES":
        return {k.name: k.title for k in evidence_kinds()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Evidence:
    """One distance against the benign null: z = value / the neuron's null scale; the bounds are
    the null's z quantiles at the fail and warn rates (Bonferroni over the neuron's kinds)."""
    kind: str
    value: float
    scale: float
    z: float
    fail_bound: float
    warn_bound: float

    @property
    def level(self) -> Level:
        if not np.isfinite(self.z):
            return "fail" if self.z > 0 else "none"
        return "fail" if self.z > self.fail_bound else "warn" if self.z > self.warn_bound else "none"

    @property
    def excess(self) -> float:
        """z over the fail bound: above 1 is beyond the null at the fail rate."""
        if self.fail_bound > 0:
            return float(self.z / self.fail_bound)
        return float("inf") if self.z > 0 else 0.0

    @property
    def null_limit(self) -> float:
        """The distance at the fail bound for this neuron (what benign re-saves stay under)."""
        return float(self.fail_bound * self.scale)


@dataclass(frozen=True)
class MissingEvidence:
    """An evidence kind that applies to the neuron but could not be computed, and why. It keeps its
    share of the false-alarm rate: the other kinds' bounds are those they have when it is measured."""
    kind: str
    why: str


@dataclass(frozen=True)
class TopKChange:
    """The top-k probe images of each version, by name and photograph."""
    k: int
    overlap: int
    top_a: list[int]
    top_b: list[int]
    new_in_b: list[int]                  # indices in B's top-k that were not in A's
    photos_a: list[tuple[str, int]]      # (photograph, crops among A's top-k), most first
    photos_b: list[tuple[str, int]]
    overlap_p_value: float               # photographs shuffled: P(overlap >= observed)
    content_p_value: float | None        # top-k centroids: permutation p-value
    retention_ab: float                  # A's top images under B (1 kept, 0 random)
    retention_ba: float                  # B's top images under A


@dataclass(frozen=True)
class ArgmaxChange:
    """Class neurons: where the class is the model's top-1 prediction, in each version."""
    share_a: float
    share_b: float
    lost: int                              # images where it was top-1 in A and is not in B
    gained: int
    lost_to: dict[int, int]                # class that is top-1 in B on the lost images -> count
    gained_from: dict[int, int]            # class that was top-1 in A on the gained images -> count
    lost_photos: list[str] = field(default_factory=list)
    gained_photos: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PhotographSupport:
    """The independent images a verdict rests on and how the change spreads over them."""
    n_images: int
    n_photographs: int
    carried_by: list[tuple[str, float]]    # photographs carrying half of the change (share of it)
    resample_support: float | None         # share of photograph resamples in which the rank evidence
                                           # is still beyond its fail bound (None when not computed)


@dataclass(frozen=True)
class VisualEvidence:
    cross_activation: float | None
    self_a: float | None
    self_b: float | None
    visual_distance: float | None
    level: Level
    text: str


@dataclass(frozen=True)
class ConstantChannel:
    which: Literal["both", "baseline", "candidate"]
    same: bool


@dataclass(frozen=True)
class RegisteredIndex:
    """When a neuron is found at another index: what its registered index shows in the candidate."""
    index: int
    evidence: list[Evidence]
    missing: list[MissingEvidence]
    constant: ConstantChannel | None      # the registered index is constant in the candidate


@dataclass
class NeuronComparison:
    """Everything measured for one neuron; `statistics` holds the report's flat numbers."""
    target: NeuronTarget
    statistics: dict[str, float | None]
    ci: dict[str, list[float]]
    evidence: list[Evidence]
    topk: TopKChange | None = None
    argmax: ArgmaxChange | None = None
    support: PhotographSupport | None = None
    identity: IdentityMatch | None = None
    matched_index: int | None = None
    similar_logit: tuple[int, float] | None = None   # class: (candidate logit that behaves like this one, Spearman)
    partner: int | None = None                       # the baseline unit the change follows (partner evidence)
    visual: VisualEvidence | None = None
    constant: ConstantChannel | None = None
    effect_flags: list[tuple[Level, str]] = field(default_factory=list)   # user effect-size thresholds crossed
    missing: list[MissingEvidence] = field(default_factory=list)          # kinds that could not be computed
    statistic: str = "max"                          # the per-image statistic audited (audit.drift.columns)
    constant_value: float | None = None             # the baseline's spatial max when it is pinned (statistic "mean")
    registered: RegisteredIndex | None = None       # the registered index's own evidence when the neuron moved

    def strongest(self, kinds=None) -> Evidence | None:
        pool = [e for e in self.evidence if kinds is None or e.kind in kinds]
        return max(pool, key=lambda e: e.excess) if pool else None

    def at_level(self, level: Level, kinds=None) -> list[Evidence]:
        order = {"fail": 2, "warn": 1, "none": 0}
        return sorted([e for e in self.evidence if (kinds is None or e.kind in kinds)
                       and order[e.level] >= order[level]], key=lambda e: -e.excess)


def measure_against_null(distances: dict[str, float], layer_null: LayerNull, channel: int, fail_rate: float,
                         warn_rate: float) -> tuple[list[Evidence], list[MissingEvidence]]:
    """(evidence records, missing kinds) of one neuron's distances (kind -> value), standardized by the
    null of its layer's `channel`. The kinds that apply are those measured or held by the null; the
    rates are split evenly over ALL of them (Bonferroni), so a kind that could not be computed (a nan
    distance, no null table, no finite null for this channel) keeps its share instead of handing it
    to the others, and is returned as missing with the reason."""
    applies = [k for k in kind_names() if k in distances or k in layer_null.distances]
    m = max(1, len(applies))
    out, missing = [], []
    for kind in applies:
        value = distances.get(kind)
        if kind not in distances or value is None or np.isnan(value):
            missing.append(MissingEvidence(kind, evidence_kind(kind).undefined if kind in distances
                                           else "it was not measured for the candidate"))
            continue
        if kind not in layer_null.distances:
            missing.append(MissingEvidence(kind, "the benign null of this layer holds no such distances"))
            continue
        scale = float(layer_null.scales(kind)[channel])
        if not np.isfinite(scale):
            missing.append(MissingEvidence(kind, "no benign re-save gave a finite distance for this channel"))
            continue
        value = float(value)
        z = value / scale if scale > 0 else (float("inf") if value > 0 else 0.0)
        out.append(Evidence(kind, value, scale, float(z), layer_null.bound(kind, fail_rate / m),
                            layer_null.bound(kind, warn_rate / m)))
    return out, missing


def evidence_against_null(distances: dict[str, float], layer_null: LayerNull, channel: int, fail_rate: float,
                          warn_rate: float) -> list[Evidence]:
    """The evidence records of `measure_against_null` (without the missing kinds)."""
    return measure_against_null(distances, layer_null, channel, fail_rate, warn_rate)[0]


def to_jsonable(c: NeuronComparison) -> dict:
    """The evidence part of the compare report (and of the stored drift result): plain JSON."""
    def clean(x):
        if isinstance(x, float):
            return x if np.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    def records(evidence: list[Evidence]) -> list[dict]:
        return [{"kind": e.kind, "title": title(e.kind), "value": e.value, "z": e.z,
                 "fail_bound": e.fail_bound, "warn_bound": e.warn_bound, "null_limit": e.null_limit, "level": e.level}
                for e in sorted(evidence, key=lambda e: -e.excess)]

    def missing(items: list[MissingEvidence]) -> list[dict]:
        return [{"kind": x.kind, "title": title(x.kind), "why": x.why} for x in items]

    out = {"evidence": records(c.evidence), "missing": missing(c.missing),
           "statistic": c.statistic, "constant_value": c.constant_value}
    reg = c.registered
    out["registered"] = None if reg is None else {
        "index": reg.index, "evidence": records(reg.evidence), "missing": missing(reg.missing),
        "constant": asdict(reg.constant) if reg.constant is not None else None}
    for name in ("topk", "argmax", "support", "identity", "visual", "constant"):
        rec = getattr(c, name)
        out[name] = asdict(rec) if rec is not None else None
    out["similar_logit"] = list(c.similar_logit) if c.similar_logit else None
    out["partner"] = c.partner
    out["effect_flags"] = [list(f) for f in c.effect_flags]
    return clean(out)
