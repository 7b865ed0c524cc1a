"""The benign null: how far each neuron moves when the baseline is re-saved benignly, and the
calibrated bounds a verdict compares the candidate with.

Guarantee. A benign candidate here is a new draw of one of the recipe's edits (audit.drift.benign,
the names in `thresholds.benign_edits`), exchangeable channel by channel with that edit's variants.
For such a candidate and any kind of evidence, `LayerNull.bound(kind, rate)` is exceeded by a
neuron of the layer with probability at most `rate`, provided that above the pooled 90th
percentile the standardized distances of all edits share one generalized Pareto tail up to a
scale per edit (the shape is estimated from the layer and never taken lighter than exponential).
Each edit's scale enters at a distribution-free 90 % upper confidence bound (an order statistic of
its own draws), so a one-variant edit such as a round trip, with one draw per channel, does not
make the bound a guess. Below 1 / (number of draws) no finite sample can show a rate, so there the
bound is that model's extrapolation. tests/drift/test_null_calibration.py measures the realised
rate on held-out draws of small synthetic layers (16 and 24 channels; Gaussian and t4-tailed
distances; one-variant and many-variant edits the largest) and fails when it exceeds 1.5x the
stated rate: at 0.01 and 0.001 it comes out at 0.07-1.25x (conservative: the price is power). A
neuron splits `false_alarm_rate` evenly over its m kinds of evidence, so its false-alarm rate under
the recipe is at most `false_alarm_rate`. Nothing is promised for edits outside the recipe (a
retrain, pruning, an export, another BN set): benchmarks/drift_bench.py measures those separately
(docs/benchmarks-drift.md).

How. For every registered layer each variant of the recipe is run over the probe set and every
evidence distance (audit.drift.statistics) is measured for EVERY channel of the layer against the
baseline: a [variants, channels] table per kind of evidence. Per layer and kind of evidence:
1. Each channel's null scale is the root mean square of its distances over the variants, shrunk
   towards the layer's typical value by two pseudo-draws (top-k statistics are often exactly 0
   for most variants). A candidate's distance is divided by it: z = distance / scale.
2. The null's own z values are computed leaving each variant out of its own scale (leave-one-out),
   which makes them honest stand-ins for a new benign re-save.
3. Each edit's positive z values (channels x its variants) are divided by their median, all edits
   are pooled and one tail is fitted to them (`tail_quantile`: peaks over the 90th percentile,
   generalized Pareto by moments, shape >= 0). The bound is the largest over the edits of the
   upper confidence bound of their median x the pooled quantile (`LayerNull.bound`).

The tables are cached per (recipe, baseline weights SHA-256, probe set SHA-256, layer, top-k) in
memory and, with a directory, on disk (.npz). Building them costs one pass over the probe set per
variant (11 for a network with batch norm) plus one pass for the BN moments.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..contentkeys import STATS_VERSION
from ..probe import ProbeSet
from ..stats import LayerActivations, layer_activations_full
from ..taps import output_layer_name
from ..errors import AuditInputError
from ..npzcache import NpzCache
from .benign import DEFAULT_EDITS, BenignVariant, benign_recipe, recipe_key
from .evidence_kinds import distances_key, layer_columns, measure
from .statistics import normalize_features

_TAIL_START = 0.90
_MAX_SHAPE = 0.45          # generalized Pareto shape cap: the moment estimator needs a finite variance
PRIOR_DRAWS = 2          # pseudo-draws of the layer's typical distance in each channel's null scale
SCALE_CONFIDENCE = 0.90  # each edit's scale is the upper confidence bound of its median at this level


def tail_quantile(values: np.ndarray, p: float) -> float:
    """The p quantile of `values` (finite ones). Above the 90th percentile u it comes from a
    generalized Pareto tail fitted by moments to the excesses over u (shape xi = (1 - m^2/v) / 2,
    scale m (1 - xi), for excess mean m and variance v), with xi in [0, 0.45]: an exponential tail
    (xi = 0) or a heavier one, never a lighter one. u + scale/xi ((0.1 / (1 - p))^xi - 1)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("inf")
    if p <= _TAIL_START or len(v) < 20:
        return float(np.quantile(v, min(p, 1.0)))
    u = float(np.quantile(v, _TAIL_START))
    excess = v[v > u] - u
    if len(excess) < 2:
        return u if len(excess) == 0 else u + float(excess[0]) * math.log((1 - _TAIL_START) / (1 - p))
    m, var = float(excess.mean()), float(excess.var(ddof=1))
    xi = min(max(0.5 * (1 - m * m / var), 0.0), _MAX_SHAPE) if var > 0 else 0.0
    scale = m * (1 - xi)
    ratio = (len(excess) / len(v)) / (1 - p)
    if xi < 1e-9:
        return u + scale * math.log(ratio)
    return u + scale / xi * (ratio ** xi - 1)


def median_upper_bound(values: np.ndarray) -> float:
    """A distribution-free upper confidence bound of the median of `values` at SCALE_CONFIDENCE: the
    order statistic X_(k) with P(X_(k) >= median) = P(Binomial(n, 1/2) <= k - 1) >= SCALE_CONFIDENCE
    (the largest value when n is too small for that)."""
    from scipy.stats import binom

    v = np.sort(np.asarray(values, float))
    k = int(binom.ppf(SCALE_CONFIDENCE, len(v), 0.5)) + 1
    return float(v[min(k, len(v)) - 1])


@dataclass
class LayerNull:
    """Null distances of every channel of one layer: kind -> [variants, channels]."""
    distances: dict[str, np.ndarray]
    variant_kinds: list[str]
    variant_names: list[str]
    _bounds: dict = field(default_factory=dict, repr=False)
    _scales: dict = field(default_factory=dict, repr=False)

    @property
    def channels(self) -> int:
        return next(iter(self.distances.values())).shape[1]

    def _pooled_square(self, kind: str) -> float:
        """The layer's typical squared null distance: median over channels of their mean square."""
        if ("pool", kind) not in self._scales:
            d = self.distances[kind].astype(float)
            ok = np.isfinite(d)
            n = ok.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ms = np.where(ok, d * d, 0.0).sum(0) / n
            ms = ms[(n > 0) & np.isfinite(ms)]
            self._scales[("pool", kind)] = max(float(np.median(ms)) if len(ms) else 0.0, 1e-18)
        return self._scales[("pool", kind)]

    def scales(self, kind: str) -> np.ndarray:
        """[C] null scale of each channel: the root mean square of its finite null distances, shrunk
        towards the layer's typical value with PRIOR_DRAWS pseudo-draws (a channel that no variant
        moved still has a scale); nan where no variant gave a finite value."""
        if kind not in self._scales:
            d = self.distances[kind].astype(float)
            ok = np.isfinite(d)
            n = ok.sum(0)
            prior = PRIOR_DRAWS * self._pooled_square(kind)
            with np.errstate(invalid="ignore", divide="ignore"):
                rms = np.sqrt((np.where(ok, d * d, 0.0).sum(0) + prior) / (n + PRIOR_DRAWS))
            self._scales[kind] = np.where(n > 0, rms, np.nan)
        return self._scales[kind]

    def leave_one_out_z(self, kind: str) -> np.ndarray:
        """[J, C] each null distance over its channel's scale computed without that variant."""
        d = self.distances[kind].astype(float)
        ok = np.isfinite(d)
        sq = np.where(ok, d * d, 0.0)
        n = ok.sum(0, keepdims=True)
        prior = PRIOR_DRAWS * self._pooled_square(kind)
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = np.sqrt((sq.sum(0, keepdims=True) - sq + prior) / (n - ok + PRIOR_DRAWS))
            return np.where(ok & np.isfinite(loo) & (loo > 0), d / loo, np.nan)

    def bound(self, kind: str, rate: float) -> float:
        """The z above which a distance of `kind` lies beyond the null at false-alarm rate `rate` (the
        module docstring states the guarantee). Per edit, its positive leave-one-out z values (a top-k
        statistic is exactly 0 for most channels of most edits) over their median are pooled; the bound
        is the largest over the edits of the upper confidence bound of that median
        (`median_upper_bound`) times the pooled quantile at 1 - rate / s (`tail_quantile`), where s is
        the largest share of positive values of an edit: P(z > bound) <= share x rate / s <= rate."""
        key = (kind, rate)
        if key not in self._bounds:
            z = self.leave_one_out_z(kind)
            edits = np.asarray(self.variant_kinds)
            pooled, scales, shares = [], [], []
            for edit in dict.fromkeys(self.variant_kinds):
                v = z[edits == edit].ravel()
                v = v[np.isfinite(v)]
                positive = v[v > 0]
                if len(positive):
                    pooled.append(positive / float(np.median(positive)))
                    scales.append(median_upper_bound(positive))
                    shares.append(len(positive) / len(v))
            if scales:
                p = max(0.0, 1 - rate / max(shares))
                self._bounds[key] = max(scales) * tail_quantile(np.concatenate(pooled), p)
            else:           # every finite z is 0 (no edit moves any channel), or none is finite
                self._bounds[key] = 0.0 if np.isfinite(z).any() else float("inf")
        return self._bounds[key]


@dataclass
class BenignNull:
    """The benign null of one baseline on one probe set: layer -> LayerNull."""
    layers: dict[str, LayerNull]
    recipe: str = ""                   # what it was built from (`benign.recipe_key`)
    seconds: float = 0.0               # time spent building what was not cached
    variants: list[str] = field(default_factory=list)

    def kinds(self, layer: str) -> list[str]:
        return list(self.layers[layer].distances)


# ---------------------------------------------------------------- building
def content_features(acts: dict[str, LayerActivations], feature_layer: str | None) -> np.ndarray | None:
    """Normalized [N, D] features of the probe images in the baseline's pooled final features."""
    if feature_layer is None or feature_layer not in acts:
        return None
    return normalize_features(acts[feature_layer].mean)


def layer_null_distances(base: LayerActivations, variant: LayerActivations, k: int, features: np.ndarray | None,
                         is_head: bool) -> dict[str, np.ndarray]:
    """kind -> [C] distances of every channel of one variant from the baseline: every registered kind
    (audit.drift.evidence_kinds), each channel in its audited statistic (audit.drift.columns), as the
    compare measures it."""
    return measure(layer_columns(base, variant, k, features, is_head))


def head_layer(model: nn.Module) -> str | None:
    try:
        return output_layer_name(model)
    except AuditInputError:
        return None


def _encode_null(value: LayerNull) -> dict[str, np.ndarray]:
    return {"__variant_kinds": np.asarray(value.variant_kinds), "__variant_names": np.asarray(value.variant_names),
            **{k: v.astype(np.float32) for k, v in value.distances.items()}}


def _decode_null(arrays) -> LayerNull:
    return LayerNull({f: a for f, a in arrays.items() if not f.startswith("__")},
                     [str(x) for x in arrays["__variant_kinds"]], [str(x) for x in arrays["__variant_names"]])


class NullCache(NpzCache[LayerNull]):
    """LayerNull tables in memory (LRU) and, under the folder a call names, as .npz files
    (audit.npzcache); the key says what the null was built from."""

    def __init__(self, max_entries: int = 32):
        super().__init__("null-1", _encode_null, _decode_null, max_entries=max_entries)

    @staticmethod
    def key(weights_key: str, probe_sha: str, layer: str, k: int, feature_layer: str | None, is_head: bool,
            recipe: str = recipe_key(DEFAULT_EDITS)) -> str:
        # weights_key: the baseline's content key (weights, architecture, model_args; audit.contentkeys);
        # recipe: the benign edits the null was built from; the statistics and distance definitions' versions
        raw = repr((recipe, STATS_VERSION, distances_key(), weights_key, probe_sha, layer, int(k), feature_layer,
                    bool(is_head)))
        return hashlib.sha256(raw.encode()).hexdigest()[:40]


_NULL_CACHE = NullCache()


def null_cache() -> NullCache:
    return _NULL_CACHE


def build_benign_null(model: nn.Module, probe: ProbeSet, layers: list[str], base_acts: dict[str, LayerActivations],
                      k: int, feature_layer: str | None, weights_key: str, cache_dir: str | Path | None = None,
                      batch_size: int = 32, variants: list[BenignVariant] | None = None,
                      edits: Sequence[str] = DEFAULT_EDITS) -> BenignNull:
    """The benign null of `model` (the baseline) for `layers`, from the cache where possible.

    `base_acts` holds the baseline's activations of `layers` and of `feature_layer`; the missing
    layers are computed together, one pass over the probe set per benign variant. The variants are
    those of the registered `edits` (audit.drift.benign), or `variants` when given."""
    import time

    directory = Path(cache_dir) if cache_dir else None
    features = content_features(base_acts, feature_layer)
    head = head_layer(model)
    layers = list(dict.fromkeys(layers))
    recipe_id = recipe_key(edits) if variants is None else "variants:" + "|".join(f"{v.kind}/{v.name}" for v in variants)
    keys = {l: _NULL_CACHE.key(weights_key, probe.sha256, l, k, feature_layer, l == head, recipe_id) for l in layers}
    out: dict[str, LayerNull] = {}
    todo = []
    for l in layers:
        hit = _NULL_CACHE.get(keys[l], directory)
        if hit is None:
            todo.append(l)
        else:
            out[l] = hit
    t0 = time.perf_counter()
    names: list[str] = []
    if todo:
        recipe = variants if variants is not None else benign_recipe(model, probe.images, batch_size, edits)
        tables: dict[str, dict[str, list]] = {l: {} for l in todo}
        for variant in recipe:
            vm = variant.build()
            acts = layer_activations_full(vm, probe, todo, batch_size, use_cache=False)
            del vm
            for l in todo:
                for kind, d in layer_null_distances(base_acts[l], acts[l], k, features, l == head).items():
                    tables[l].setdefault(kind, []).append(d)
        kinds = [v.kind for v in recipe]
        names = [v.name for v in recipe]
        for l in todo:
            value = LayerNull({kind: np.stack(v) for kind, v in tables[l].items()}, kinds, names)
            _NULL_CACHE.put(keys[l], value, directory)
            out[l] = value
    seconds = time.perf_counter() - t0 if todo else 0.0
    any_layer = next(iter(out.values()), None)
    return BenignNull(out, recipe_id, seconds, names or (any_layer.variant_names if any_layer else []))
