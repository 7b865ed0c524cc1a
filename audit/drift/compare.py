"""The compare: drift verdicts of registered neurons from a baseline to a candidate version.

`compare_versions` runs both models over the probe set (activations cached per weights, probe
and layer), builds or loads the baseline's benign null (audit.drift.null) and hands the
activations to `compare_activations`, which measures each neuron (audit.drift.statistics),
checks a moved channel's identity (audit.drift.identity), gathers typed evidence
(audit.drift.evidence) and assigns verdicts (audit.drift.verdicts).

What the statistics claim:
- A FAIL says: on these probe photographs the neuron responds further from the baseline than
  any benign re-save of the recipe moves it (false-alarm rate `false_alarm_rate` per neuron and
  benign kind). This needs no large probe set: a change confined to one photograph can FAIL.
- The intervals resample whole photographs (the independent unit) and say how far the effect
  sizes would move with other photographs; `support.resample_support` is the share of
  photograph resamples in which the rank evidence still clears its bound. A FAIL carried by
  one or two photographs is reported as such: a fact about these photographs, not a claim
  about images beyond them. The power statement says how many photographs such a claim needs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from ..config import ThresholdsConfig
from ..models import weights_sha256
from ..probe import ProbeSet
from ..records import NeuronTarget
from ..stats import LayerActivations, layer_activations_full
from ..taps import final_feature_layer
from .columns import audited_values, constant_channels, mean_audited, statistic_name
from .evidence import ArgmaxChange, ConstantChannel, Evidence, MissingEvidence, NeuronComparison, PhotographSupport, \
    RegisteredIndex, TopKChange, VisualEvidence, measure_against_null
from .identity import IdentityMatch, check_one_to_one, match_moved_channel
from .null import BenignNull, LayerNull, build_benign_null, content_features, head_layer
from .resampling import bootstrap_statistics, cluster_bootstrap_indices, content_p_value, percentile_interval, \
    photograph_labels, power_statement, topk_overlap_p_value
from .evidence_kinds import Columns, evidence_kinds, measure
from .statistics import correlation_matrix, cross_activation, effective_k, ks, partner_distance, retention, spearman, \
    top_indices, topk_overlap, visual_distance, wasserstein_norm
from .verdicts import assign_verdicts

SELF_EXCITATION_MIN = 0.9       # a visualization counts as strong evidence only if it excites its own version this much
PERMUTATIONS = 999


class CompareResults(list):
    """list[DriftResult], plus what the compare says as a whole."""
    n_images: int = 0
    n_photographs: int = 0
    enough_photographs: bool = True
    power: str = ""
    null_seconds: float = 0.0
    null_variants: tuple[str, ...] = ()     # immutable: a class-level default is shared by every instance


class _Context:
    """What every neuron of one compare shares."""

    def __init__(self, names, groups, thresholds: ThresholdsConfig, features, head):
        self.names = list(names)
        self.n = len(self.names)
        self.labels = photograph_labels(groups, self.n)
        self.photo_names = np.asarray(list(groups) if groups is not None else self.names)
        self.t = thresholds
        self.k = effective_k(thresholds.top_k, self.n)
        self.features = features
        self.head = head
        if thresholds.cluster_bootstrap:
            self.boot = cluster_bootstrap_indices(self.labels, thresholds.bootstrap, thresholds.bootstrap_seed)
        else:
            rng = np.random.default_rng(thresholds.bootstrap_seed)
            self.boot = rng.integers(0, self.n, size=(thresholds.bootstrap, self.n))
        self._layers: dict[str, _Layer] = {}

    def layer(self, layer: str, la: LayerActivations, lb: LayerActivations) -> "_Layer":
        if layer not in self._layers:
            self._layers[layer] = _Layer.of(la, lb)
        return self._layers[layer]


@dataclass
class _Layer:
    """One layer of both versions, each baseline channel in its audited statistic (audit.drift.columns)."""
    la: LayerActivations
    lb: LayerActivations
    use_mean: np.ndarray            # [C] audited on the spatial mean
    a: np.ndarray                   # [N, C] the baseline's audited values
    dead_a: np.ndarray              # [C] constant on every statistic
    dead_b: np.ndarray

    @classmethod
    def of(cls, la: LayerActivations, lb: LayerActivations) -> "_Layer":
        use_mean = mean_audited(la)
        return cls(la, lb, use_mean, audited_values(la, use_mean).astype(float), constant_channels(la),
                   constant_channels(lb))

    def statistic(self, i: int) -> str:
        return statistic_name(bool(self.use_mean[i]))

    def baseline(self, statistic: str) -> np.ndarray:
        return np.asarray(self.la.mean if statistic == "mean" else self.la.max, float)

    def candidate(self, statistic: str) -> np.ndarray:
        return np.asarray(self.lb.mean if statistic == "mean" else self.lb.max, float)

    def dead_at(self, acts: LayerActivations, dead: np.ndarray, i: int) -> np.ndarray:
        """[C] the channels of `acts` dead at the value of the baseline's dead channel i."""
        top, mean = float(self.la.max[0, i]), float(self.la.mean[0, i])
        tol = 1e-6 * max(1.0, abs(top), abs(mean))
        return dead & (np.abs(acts.max[0] - top) <= tol) & (np.abs(acts.mean[0] - mean) <= tol)


def _grid_column(la: LayerActivations, i: int) -> np.ndarray | None:
    return None if la.grid is None else la.grid[:, i:i + 1, :]


@dataclass
class _Measurement:
    """Baseline channel `channel` against the candidate's column `index`, judged by the channel's null."""
    channel: int
    index: int
    b: np.ndarray                                   # the candidate's values at `index`
    evidence: list[Evidence]
    missing: list[MissingEvidence]
    partner: int                                    # the baseline unit the change follows, or -1

    @property
    def fails(self) -> bool:
        return any(e.level == "fail" for e in self.evidence)


def _measure(ctx: _Context, lay: _Layer, i: int, j: int, layer_null: LayerNull, head: bool = False) -> _Measurement:
    """Step 2, measure: every registered evidence kind (audit.drift.evidence_kinds) of baseline channel i
    against the candidate's column j (in i's audited statistic), standardized by i's benign null;
    `head`: the layer is the model's head (class margins)."""
    a = lay.a[:, i:i + 1]
    b = lay.candidate(lay.statistic(i))[:, j:j + 1]
    cols = Columns(a, b, ctx.k, lay.a, np.array([i]), ctx.features, _grid_column(lay.la, i), _grid_column(lay.lb, j),
                   lay.la.mean if head else None, lay.lb.mean if head else None)
    distances = {kind: float(v[0]) for kind, v in measure(cols).items()}
    evidence, missing = measure_against_null(distances, layer_null, i, ctx.t.false_alarm_rate, ctx.t.warn_rate)
    partner = int(partner_distance(lay.a, b, np.array([i]))[1][0]) if "partner" in distances else -1
    return _Measurement(i, j, b[:, 0], evidence, missing, partner)


def _photo_counts(ctx: _Context, idx: np.ndarray) -> list[tuple[str, int]]:
    return Counter(ctx.photo_names[idx].tolist()).most_common()


def _topk_change(ctx: _Context, a: np.ndarray, b: np.ndarray) -> TopKChange:
    k = ctx.k
    ta, tb = top_indices(a, k), top_indices(b, k)
    inter, _ = topk_overlap(a, b, k)
    r_ab, r_ba = retention(a[:, None], b[:, None], k)
    content_p = None
    if ctx.features is not None:
        content_p = content_p_value(ctx.features, ta, tb, PERMUTATIONS, ctx.t.bootstrap_seed, ctx.labels)
    return TopKChange(k=k, overlap=int(inter), top_a=[int(i) for i in ta], top_b=[int(i) for i in tb],
                      new_in_b=[int(i) for i in tb if i not in set(ta.tolist())],
                      photos_a=_photo_counts(ctx, ta), photos_b=_photo_counts(ctx, tb),
                      overlap_p_value=topk_overlap_p_value(a, b, k, ctx.labels, PERMUTATIONS, ctx.t.bootstrap_seed),
                      content_p_value=content_p, retention_ab=float(r_ab[0]), retention_ba=float(r_ba[0]))


def _argmax_change(ctx: _Context, index: int, la: LayerActivations, lb: LayerActivations) -> ArgmaxChange:
    top_a, top_b = la.mean.argmax(1), lb.mean.argmax(1)
    was, now = top_a == index, top_b == index
    lost, gained = was & ~now, now & ~was
    return ArgmaxChange(share_a=float(was.mean()), share_b=float(now.mean()), lost=int(lost.sum()),
                        gained=int(gained.sum()), lost_to=dict(Counter(top_b[lost].tolist())),
                        gained_from=dict(Counter(top_a[gained].tolist())),
                        lost_photos=[p for p, _ in Counter(ctx.photo_names[lost].tolist()).most_common()],
                        gained_photos=[p for p, _ in Counter(ctx.photo_names[gained].tolist()).most_common()])


def _support(ctx: _Context, a: np.ndarray, b: np.ndarray, boot: dict[str, np.ndarray], rank_limit: float | None) -> PhotographSupport:
    """Which photographs carry the change (their share of the total |B - A| in units of A's std) and,
    when the rank evidence FAILs (`rank_limit`: its null limit), the share of photograph resamples
    in which 1 - Spearman still exceeds that limit."""
    sd = float(a.std(ddof=1)) if ctx.n > 1 else 0.0
    move = np.abs(b - a) / (sd if sd > 0 else 1.0)
    per_photo = np.bincount(ctx.labels, weights=move)
    total = per_photo.sum()
    carried: list[tuple[str, float]] = []
    if total > 0:
        order = np.argsort(-per_photo)
        first = {int(l): str(ctx.photo_names[np.flatnonzero(ctx.labels == l)[0]]) for l in np.unique(ctx.labels)}
        cum = 0.0
        for g in order:
            share = float(per_photo[g] / total)
            carried.append((first[int(g)], share))
            cum += share
            if cum >= 0.5:
                break
    support = None
    if rank_limit is not None:
        rho = boot["spearman"]
        rho = rho[np.isfinite(rho)]
        support = float(np.mean(1 - rho > rank_limit)) if len(rho) else None
    return PhotographSupport(n_images=ctx.n, n_photographs=int(ctx.labels.max()) + 1, carried_by=carried,
                             resample_support=support)


def _visual(t: ThresholdsConfig, a, b, viz_acts, feats, paired, st) -> VisualEvidence | None:
    if viz_acts is None and feats is None:
        return None
    cross = self_a = self_b = vd = None
    texts, level = [], "none"
    if viz_acts is not None:
        ca = cross_activation(viz_acts, a, b)
        cross, self_a, self_b = ca["cross_activation"], ca["self_a"], ca["self_b"]
        st.update({f"viz_{k}": v for k, v in ca.items() if k != "cross_activation"})
        st["cross_activation"] = cross
        excites = min(self_a, self_b)
        if cross <= t.cross_activation_fail and excites >= SELF_EXCITATION_MIN:
            level = "fail"
            texts.append(f"each version's visualization excites it ({excites:.2f}) but one falls to percentile "
                         f"{cross:.2f} under the other version (<= {t.cross_activation_fail:.2f})")
        elif cross < t.cross_activation_warn and excites >= t.cross_activation_warn:
            level = "warn"
            texts.append(f"cross-activation {cross:.2f} < {t.cross_activation_warn:.2f}")
    if feats is not None:
        vd = visual_distance(*feats, paired=paired)
        st["visual_distance"] = vd
        if vd is not None and vd > t.visual_distance_warn:
            level = "fail" if level == "fail" else "warn"
            texts.append(f"visualizations differ: distance {vd:.1f}x seed spread > {t.visual_distance_warn:.1f}")
    return VisualEvidence(cross, self_a, self_b, vd, level, "; ".join(texts))


def _effect_flags(t: ThresholdsConfig, rho: float, jac: float, wn: float) -> list[tuple[str, str]]:
    flags = []
    for level, (ts, tj, tw) in (("fail", (t.spearman_fail, t.topk_jaccard_fail, t.wasserstein_fail)),
                                ("warn", (t.spearman_warn, t.topk_jaccard_warn, t.wasserstein_warn))):
        if rho < ts:
            flags.append((level, f"Spearman {rho:.2f} < spearman_{level} {ts:.2f}"))
        if jac < tj:
            flags.append((level, f"top-k Jaccard {jac:.2f} < topk_jaccard_{level} {tj:.2f}"))
        if wn > tw:
            flags.append((level, f"W/sigma {wn:.2f} > wasserstein_{level} {tw:.2f}"))
        if flags:
            break
    return flags


@dataclass
class _Found:
    """Where the registered neuron is in the candidate (step 1)."""
    index: int                                      # the candidate's column that holds it
    constant: ConstantChannel | None
    identity: IdentityMatch | None                  # the cross-fitted match, when one was looked for
    measured: _Measurement | None                   # at `index`; None when constant
    registered: RegisteredIndex | None              # what the registered index shows, when the neuron moved


def _constancy(lay: _Layer, i: int) -> ConstantChannel:
    dead_a, dead_b = bool(lay.dead_a[i]), bool(lay.dead_b[i])
    same = dead_a and dead_b and bool(lay.dead_at(lay.lb, lay.dead_b, i)[i])
    return ConstantChannel("both" if dead_a and dead_b else ("baseline" if dead_a else "candidate"), same)


def _left_its_index(ctx: _Context, lay: _Layer, j: int, layer_null: LayerNull) -> bool:
    """Whether the baseline's channel j is gone from index j in the candidate: dead on one side only,
    or beyond its benign null there."""
    if lay.dead_a[j] or lay.dead_b[j]:
        return not _constancy(lay, j).same
    return _measure(ctx, lay, j, j, layer_null).fails


def _moved_channel(ctx: _Context, lay: _Layer, i: int, layer_null: LayerNull
                   ) -> tuple[IdentityMatch, _Measurement | None]:
    """(the cross-fitted match of baseline channel i, its measurement at the match when the move is
    accepted): both folds agree on another index j with held-out Spearman >= identity_match_spearman,
    the move is one-to-one (j's own channel left its index and j matches back to i), and i measured
    at j is within its benign null."""
    s = lay.statistic(i)
    match = match_moved_channel(lay.a[:, i], lay.candidate(s), ctx.labels)
    if not (match.agreed and match.index != i and match.heldout_spearman >= ctx.t.identity_match_spearman):
        return match, None
    j = match.index
    match = check_one_to_one(match, i, lay.candidate(s), lay.baseline(s), ctx.labels,
                             _left_its_index(ctx, lay, j, layer_null))
    moved = _measure(ctx, lay, i, j, layer_null)
    match = replace(match, within_null=not moved.fails)
    return match, (moved if match.one_to_one and not moved.fails else None)


def _dead_channel_moved(ctx: _Context, lay: _Layer, i: int, layer_null: LayerNull) -> int | None:
    """The index a dead baseline channel i moved to, one-to-one, or None. Dead channels at one value
    are indistinguishable, so the move is read from the set: exactly one candidate channel became
    dead at i's value, as many channels are dead at it in both versions, and the live channel that
    left that index is found at i (`_moved_channel`). A dead channel that was revived is not moved."""
    at_a, at_b = lay.dead_at(lay.la, lay.dead_a, i), lay.dead_at(lay.lb, lay.dead_b, i)
    new = np.flatnonzero(at_b & ~at_a)
    if len(new) != 1 or at_a.sum() != at_b.sum():
        return None
    j = int(new[0])
    _, moved = _moved_channel(ctx, lay, j, layer_null)
    return j if moved is not None and moved.index == i else None


def _identify(ctx: _Context, tg: NeuronTarget, lay: _Layer, layer_null: LayerNull, head: bool) -> _Found:
    """Step 1, identify the column: the registered index, measured (`_measure`) unless it is dead on
    one side; an inner neuron that is dead on one side only, or beyond its null at its index, is looked
    for at another index (`_moved_channel`, `_dead_channel_moved`), and the registered index's own
    evidence is kept next to an accepted move."""
    i = tg.index
    dead_a, dead_b = bool(lay.dead_a[i]), bool(lay.dead_b[i])
    here = None if dead_a or dead_b else _measure(ctx, lay, i, i, layer_null, head)
    identity = None
    if tg.kind == "inner" and dead_a and not dead_b:
        j = _dead_channel_moved(ctx, lay, i, layer_null)
        if j is not None:
            return _Found(j, ConstantChannel("both", True), None, None,
                          RegisteredIndex(i, [], [], ConstantChannel("baseline", False)))
    elif tg.kind == "inner" and ((dead_b and not dead_a) or (here is not None and here.fails)):
        identity, moved = _moved_channel(ctx, lay, i, layer_null)
        if moved is not None:
            registered = RegisteredIndex(i, here.evidence, here.missing, None) if here is not None else \
                RegisteredIndex(i, [], [], _constancy(lay, i))
            return _Found(moved.index, None, identity, moved, registered)
    return _Found(i, _constancy(lay, i) if dead_a or dead_b else None, identity, here, None)


def compare_neuron(ctx: _Context, tg: NeuronTarget, la: LayerActivations, lb: LayerActivations, layer_null: LayerNull,
                   viz_acts=None, visual_feats=None, visual_paired: bool = False) -> NeuronComparison:
    """All statistics and typed evidence of one neuron, in three steps: identify the column (`_identify`:
    the audited statistic, dead or not, the registered index or a one-to-one move), measure it
    (`_measure`: every evidence kind against the benign null, naming those that could not be
    computed) and weigh the evidence (`_weigh`: effect sizes, intervals, top images, support)."""
    lay = ctx.layer(tg.layer, la, lb)
    head = tg.layer == ctx.head
    found = _identify(ctx, tg, lay, layer_null, head)
    return _weigh(ctx, tg, lay, found, head and tg.kind == "class", viz_acts, visual_feats, visual_paired)


def _similar_logit(ctx: _Context, a: np.ndarray, lb: LayerActivations, i: int) -> tuple[int, float] | None:
    """A class neuron beyond its null: the candidate logit that now behaves like it (rows swapped?)."""
    row = correlation_matrix(a[:, None], lb.mean)[0]
    j = int(np.argmax(row))
    return (j, float(row[j])) if j != i and row[j] >= ctx.t.identity_match_spearman else None


def _weigh(ctx: _Context, tg: NeuronTarget, lay: _Layer, found: _Found, is_head: bool, viz_acts, visual_feats,
           visual_paired: bool) -> NeuronComparison:
    """Step 3, weigh the evidence: the flat statistics, their photograph intervals, the top images,
    where the top-1 went, the photographs that carry the change, the visual evidence and the user's
    effect-size thresholds, gathered into one NeuronComparison."""
    t, i = ctx.t, tg.index
    a = lay.a[:, i]
    measured, constant = found.measured, found.constant
    b = measured.b if measured is not None else lay.candidate(lay.statistic(i))[:, found.index]
    evidence = measured.evidence if measured is not None else []
    similar = None
    if tg.kind == "class" and any(e.level == "fail" for e in evidence):
        similar = _similar_logit(ctx, a, lay.lb, i)
    n = ctx.n
    rho = spearman(a, b)
    inter, jac = topk_overlap(a, b, ctx.k)
    wn = wasserstein_norm(a, b)
    ks_stat, ks_p = ks(a, b)
    by_kind = {e.kind: e for e in evidence}
    st: dict[str, float | None] = {
        "spearman": rho if constant is None else (1.0 if constant.same else 0.0), "topk_jaccard": jac,
        "topk_p_value": None, "wasserstein_norm": wn, "cross_activation": None, "visual_distance": None,
        "ks": ks_stat, "ks_p_value": ks_p, "topk_k": float(ctx.k), "topk_overlap": float(inter),
        "mean_a": float(a.mean()), "mean_b": float(b.mean()), "std_a": float(a.std(ddof=1)) if n > 1 else 0.0,
        "std_b": float(b.std(ddof=1)) if n > 1 else 0.0, "n": float(n), "n_photographs": float(ctx.labels.max() + 1)}
    topk = _topk_change(ctx, a, b) if constant is None else None
    if topk is not None:
        st.update(topk_p_value=topk.overlap_p_value, retention_ab=topk.retention_ab, retention_ba=topk.retention_ba,
                  content_p_value=topk.content_p_value)
    for kind in evidence_kinds():
        if kind.statistic is not None and kind.name in by_kind:
            st[kind.statistic] = kind.report(by_kind[kind.name].value)
    argmax = _argmax_change(ctx, i, lay.la, lay.lb) if is_head else None
    if argmax is not None:
        st.update(argmax_share_a=argmax.share_a, argmax_share_b=argmax.share_b)
    ci, boot = {}, {}
    if constant is None:
        boot = bootstrap_statistics(a, b, ctx.boot, ctx.k)
        ci = {key: percentile_interval(v, t.alpha) for key, v in boot.items()}
    rank = by_kind.get("rank")
    rank_limit = rank.null_limit if rank is not None and rank.level == "fail" else None
    support = _support(ctx, a, b, boot, rank_limit) if constant is None else None
    visual = _visual(t, a, b, viz_acts, visual_feats, visual_paired, st)
    flags = _effect_flags(t, st["spearman"], jac, wn) if constant is None and np.isfinite(rho) else []
    statistic = lay.statistic(i)
    partner = measured.partner if measured is not None and measured.partner >= 0 and "partner" in by_kind else None
    return NeuronComparison(target=tg, statistics=st, ci=ci, evidence=evidence, topk=topk, argmax=argmax,
                            support=support, identity=found.identity,
                            matched_index=found.index if found.index != i else None, similar_logit=similar,
                            visual=visual, constant=constant, effect_flags=flags, partner=partner,
                            missing=measured.missing if measured is not None else [], statistic=statistic,
                            constant_value=float(lay.la.max[0, i]) if statistic == "mean" else None,
                            registered=found.registered)


def compare_activations(acts_a: dict[str, LayerActivations], acts_b: dict[str, LayerActivations],
                        targets: list[NeuronTarget], null: BenignNull, names: list[str], groups: list[str] | None,
                        thresholds: ThresholdsConfig, features: np.ndarray | None = None, head: str | None = None,
                        visual_features_a: dict[str, np.ndarray] | None = None,
                        visual_features_b: dict[str, np.ndarray] | None = None,
                        viz_acts: dict[str, tuple[float, float, float, float]] | None = None,
                        visual_paired: Collection[str] = (), class_names: dict[int, str] | None = None) -> CompareResults:
    """Verdicts of `targets` from per-layer activations of both versions on the same probe images
    (`names`, `groups`: each image's name and source photograph) and the baseline's benign null."""
    t = thresholds
    ctx = _Context(names, groups, t, features, head)
    comparisons = []
    for tg in targets:
        la, lb = acts_a[tg.layer], acts_b[tg.layer]
        if not 0 <= tg.index < la.max.shape[1] or la.max.shape[1] != lb.max.shape[1]:
            raise IndexError(f"neuron {tg.neuron_id!r}: index {tg.index} out of range for layer {tg.layer!r} "
                             f"({la.max.shape[1]} channels in the baseline, {lb.max.shape[1]} in the candidate)")
        vf = None
        if visual_features_a and visual_features_b and tg.neuron_id in visual_features_a \
                and tg.neuron_id in visual_features_b:
            vf = (visual_features_a[tg.neuron_id], visual_features_b[tg.neuron_id])
        va = viz_acts.get(tg.neuron_id) if viz_acts else None
        comparisons.append(compare_neuron(ctx, tg, la, lb, null.layers[tg.layer], va, vf, tg.neuron_id in visual_paired))
    results = CompareResults(assign_verdicts(comparisons, t, class_names))
    results.n_images = ctx.n
    results.n_photographs = int(ctx.labels.max()) + 1 if ctx.n else 0
    results.enough_photographs, results.power = power_statement(results.n_photographs, t.detect_fraction, t.alpha)
    results.null_seconds = null.seconds
    results.null_variants = tuple(null.variants)
    return results


def compare_versions(model_a: nn.Module, model_b: nn.Module, probe: ProbeSet, targets: list[NeuronTarget],
                     thresholds: ThresholdsConfig | None = None,
                     visual_features_a: dict[str, np.ndarray] | None = None,
                     visual_features_b: dict[str, np.ndarray] | None = None,
                     viz_acts: dict[str, tuple[float, float, float, float]] | None = None,
                     probe_cache_key: tuple[str, str] | None = None, batch_size: int = 32,
                     visual_paired: Collection[str] = (), null_cache_dir=None,
                     class_names: dict[int, str] | None = None) -> CompareResults:
    """Drift verdicts of `targets` from model_a (baseline) to model_b (candidate) on `probe`.

    `visual_features_*`: neuron_id -> [seeds, D] features of the visualizations; `visual_paired`:
    the neuron ids whose two feature arrays are the same seeds in the same order; `viz_acts`:
    neuron_id -> (A's image under A, A's image under B, B's image under B, B's image under A);
    `probe_cache_key`: the two weights SHA-256 (skips rehashing); `null_cache_dir`: where the
    baseline's benign null is kept on disk (memory only when None); `class_names`: class index ->
    name for the reasons. Both models are left as they were."""
    t = thresholds or ThresholdsConfig()
    key_a, key_b = probe_cache_key if probe_cache_key else (weights_sha256(model_a), weights_sha256(model_b))
    layers = list(dict.fromkeys(tg.layer for tg in targets))
    feature_layer = final_feature_layer(model_a)
    wanted_a = layers + ([feature_layer] if feature_layer and feature_layer not in layers else [])
    acts_a = layer_activations_full(model_a, probe, wanted_a, batch_size, weights_key=key_a)
    acts_b = layer_activations_full(model_b, probe, layers, batch_size, weights_key=key_b)
    k = effective_k(t.top_k, len(probe.names))
    null = build_benign_null(model_a, probe, layers, acts_a, k, feature_layer, key_a, null_cache_dir, batch_size,
                             edits=t.benign_edits)
    return compare_activations(acts_a, acts_b, targets, null, probe.names, probe.groups, t,
                               features=content_features(acts_a, feature_layer), head=head_layer(model_a),
                               visual_features_a=visual_features_a, visual_features_b=visual_features_b,
                               viz_acts=viz_acts, visual_paired=visual_paired, class_names=class_names)
