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

import numpy as np
from torch import nn

from ..config import ThresholdsConfig
from ..models import weights_sha256
from ..probe import ProbeSet
from ..records import NeuronTarget
from ..stats import LayerActivations, layer_activations_full
from ..taps import final_feature_layer
from .evidence import ArgmaxChange, ConstantChannel, NeuronComparison, PhotographSupport, TopKChange, VisualEvidence, \
    evidence_against_null
from .identity import match_moved_channel
from .null import BenignNull, LayerNull, build_benign_null, content_features, head_layer
from .resampling import bootstrap_statistics, cluster_bootstrap_indices, content_p_value, percentile_interval, \
    photograph_labels, power_statement, topk_overlap_p_value
from .statistics import correlation_matrix, cross_activation, effective_k, evidence_distances, ks, margin_distance, \
    partner_distance, retention, spearman, top_indices, topk_overlap, visual_distance, wasserstein_norm
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
    null_variants: list[str] = []


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
        self._margins: dict[str, np.ndarray] = {}

    def margins(self, layer: str, la: LayerActivations, lb: LayerActivations) -> np.ndarray:
        if layer not in self._margins:
            self._margins[layer] = margin_distance(la.mean, lb.mean)
        return self._margins[layer]


def _grid_column(la: LayerActivations, i: int) -> np.ndarray | None:
    return None if la.grid is None else la.grid[:, i:i + 1, :]


def _distances(ctx: _Context, la: LayerActivations, i: int, b: np.ndarray, grid_b) -> tuple[dict[str, float], int]:
    """(kind -> distance of baseline channel i against candidate values b, the partner unit or -1)."""
    a = la.max[:, i].astype(float)
    d = evidence_distances(a[:, None], b[:, None], ctx.k, ctx.features, _grid_column(la, i), grid_b)
    out = {kind: float(v[0]) for kind, v in d.items()}
    size, partner = partner_distance(la.max, b[:, None], np.array([i]))
    out["partner"] = float(size[0])
    return out, int(partner[0])


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


def _moved_across_constant(ctx: _Context, t: ThresholdsConfig, la: LayerActivations, lb: LayerActivations,
                           layer_null: LayerNull, i: int, const_a: bool) -> tuple[int | None, np.ndarray | None]:
    """(candidate channel, its values) when exactly one side of channel i is constant and the channel
    moved: a dead channel (constant in the baseline) is found at the candidate's only channel dead at
    the same value; a live channel (the candidate's index i is now constant) by the cross-fitted match,
    within the benign null. (None, None) otherwise."""
    a = la.max[:, i].astype(float)
    if const_a:
        dead = np.flatnonzero((np.ptp(lb.max, axis=0) == 0)
                              & (np.abs(lb.max[0] - a[0]) <= 1e-6 * max(1.0, abs(float(a[0])))))
        if len(dead) == 1:
            return int(dead[0]), lb.max[:, int(dead[0])].astype(float)
        return None, None
    m = match_moved_channel(a, lb.max, ctx.labels)
    if not (m.agreed and m.index != i and m.heldout_spearman >= t.identity_match_spearman):
        return None, None
    b = lb.max[:, m.index].astype(float)
    ev = evidence_against_null(_distances(ctx, la, i, b, _grid_column(lb, m.index))[0], layer_null, i,
                               t.false_alarm_rate, t.warn_rate)
    return (m.index, b) if not any(e.level == "fail" for e in ev) else (None, None)


def compare_neuron(ctx: _Context, tg: NeuronTarget, la: LayerActivations, lb: LayerActivations, layer_null: LayerNull,
                   viz_acts=None, visual_feats=None, visual_paired: bool = False) -> NeuronComparison:
    """All statistics and typed evidence of one neuron."""
    t, i = ctx.t, tg.index
    a, b = la.max[:, i].astype(float), lb.max[:, i].astype(float)
    grid_b = _grid_column(lb, i)
    is_head = tg.kind == "class" and tg.layer == ctx.head
    fail_rate, warn_rate = t.false_alarm_rate, t.warn_rate
    constant = None
    evidence, identity, matched, similar, partner = [], None, None, None, -1
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if tg.kind == "inner" and const_a != const_b:
        # one side constant: a dead channel may have moved (or another channel moved into this index)
        j, b_moved = _moved_across_constant(ctx, t, la, lb, layer_null, i, const_a)
        if j is not None:
            matched, b, const_b, grid_b = j, b_moved, bool(np.ptp(b_moved) == 0), _grid_column(lb, j)
    if const_a or const_b:
        same = bool(const_a and const_b and abs(a[0] - b[0]) <= 1e-6 * max(1.0, abs(a[0])))
        constant = ConstantChannel("both" if const_a and const_b else ("baseline" if const_a else "candidate"), same)
    else:
        d, partner = _distances(ctx, la, i, b, grid_b)
        if is_head:
            d["margin"] = float(ctx.margins(tg.layer, la, lb)[i])
        evidence = evidence_against_null(d, layer_null, i, fail_rate, warn_rate)
        own_fail = any(e.level == "fail" for e in evidence)
        if own_fail and tg.kind == "inner" and matched is None:
            identity = match_moved_channel(a, lb.max, ctx.labels)
            j = identity.index
            if identity.agreed and j != i and identity.heldout_spearman >= t.identity_match_spearman:
                d_moved, partner_moved = _distances(ctx, la, i, lb.max[:, j].astype(float), _grid_column(lb, j))
                moved = evidence_against_null(d_moved, layer_null, i, fail_rate, warn_rate)
                if not any(e.level == "fail" for e in moved):
                    matched, evidence, b, partner = j, moved, lb.max[:, j].astype(float), partner_moved
        if own_fail and tg.kind == "class":
            row = correlation_matrix(a[:, None], lb.mean)[0]
            j = int(np.argmax(row))
            if j != i and row[j] >= t.identity_match_spearman:
                similar = (j, float(row[j]))
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
    for kind, key in (("content", "content_shift"), ("spatial", "spatial_agreement"), ("margin", "margin_shift"),
                      ("partner", "partner_component")):
        if kind in by_kind:
            st[key] = (1 - by_kind[kind].value) if kind == "spatial" else by_kind[kind].value
    argmax = _argmax_change(ctx, i, la, lb) if is_head else None
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
    return NeuronComparison(target=tg, statistics=st, ci=ci, evidence=evidence, topk=topk, argmax=argmax,
                            support=support, identity=identity, matched_index=matched, similar_logit=similar,
                            visual=visual, constant=constant, effect_flags=flags,
                            partner=partner if partner >= 0 and "partner" in by_kind else None)


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
    results.null_variants = list(null.variants)
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
    null = build_benign_null(model_a, probe, layers, acts_a, k, feature_layer, key_a, null_cache_dir, batch_size)
    return compare_activations(acts_a, acts_b, targets, null, probe.names, probe.groups, t,
                               features=content_features(acts_a, feature_layer), head=head_layer(model_a),
                               visual_features_a=visual_features_a, visual_features_b=visual_features_b,
                               viz_acts=viz_acts, visual_paired=visual_paired, class_names=class_names)
