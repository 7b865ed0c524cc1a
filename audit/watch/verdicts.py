"""PASS/WARN/FAIL for each neuron and for the batch, with reasons, power figures and the
pattern of which neurons moved together.

- FAIL (pages someone): Holm-adjusted p-value < `alpha` over the family {every neuron, the
  joint test} — at most `alpha` of batches drawn from the reference distribution FAIL — and,
  for a neuron, a change of practical size: |mean shift| >= `shift_fail` reference SDs or a
  tail fraction moved by >= `tail_fail`.
- WARN: Benjamini-Hochberg-adjusted p-value < `alpha_warn` (a false discovery rate).
- The whole-layer test (`layers.py`: every channel of the tapped layers and the pooled embedding,
  photographs as units) is one more member of the Holm/BH family, judged like the joint test.
- The batch FAILs when a neuron, the joint test or the whole-layer test FAILs.
- Reasons agree with the verdict: a PASS neuron whose interval excludes zero is "moved slightly,
  below a FAIL", not "within the reference window".
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..config import WatchConfig
from ..multiple_testing import benjamini_hochberg, holm
from ..records import NeuronTarget
from .design import ReferenceWindow, design_variance
from .joint import joint_shift
from .layers import LAYERS_ID, LayersShift, layers_shift
from .shift import NeuronShift, detectable_shift, images_needed, neuron_shift

JOINT_ID = "(joint)"


@dataclass
class NeuronVerdict:
    neuron_id: str
    layer: str
    index: int
    kind: str
    verdict: str
    reason: str
    statistics: dict
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"id": self.neuron_id, "layer": self.layer, "index": self.index, "kind": self.kind,
                "verdict": self.verdict, "reason": self.reason, "statistics": self.statistics,
                "evidence": self.evidence}


@dataclass
class BatchVerdict:
    verdict: str
    neurons: list[NeuronVerdict]
    joint: dict
    groups: list[dict]
    summary: str
    power: dict
    n_images: int
    reference: dict
    layers: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "WARN": 0, "FAIL": 0}
        for n in self.neurons:
            out[n.verdict] += 1
        return out


def _what(t: NeuronTarget) -> str:
    return "logit" if t.kind == "class" else "channel"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _parts(s: NeuronShift) -> list[str]:
    parts = [f"mean {s.shift:+.2f} SD [{s.shift_ci[0]:+.2f}, {s.shift_ci[1]:+.2f}]"]
    if abs(s.above - s.above_reference) >= 0.05 or s.p_above < 0.05:
        parts.append(f"{_pct(s.above)} of images above the reference's top-10% level (reference {_pct(s.above_reference)})")
    if abs(s.below - s.below_reference) >= 0.05 or s.p_below < 0.05:
        parts.append(f"{_pct(s.below)} below its bottom-10% level (reference {_pct(s.below_reference)})")
    return parts


def _large(s: NeuronShift, st: WatchConfig) -> bool:
    return (abs(s.shift) >= st.shift_fail or abs(s.above - s.above_reference) >= st.tail_fail
            or abs(s.below - s.below_reference) >= st.tail_fail)


def _reason(t: NeuronTarget, s: NeuronShift, verdict: str, p_holm: float, p_bh: float, st: WatchConfig) -> str:
    core = "; ".join(_parts(s))
    if verdict == "PASS":
        if s.shift_ci[0] > 0 or s.shift_ci[1] < 0:
            return (f"{_what(t)} moved slightly, below a FAIL (|mean| >= {st.shift_fail:.2f} SD or a tail moved "
                    f">= {_pct(st.tail_fail)}, at Holm p < {st.alpha:g}; here Holm p={p_holm:.2g}): {core}")
        return f"within the reference window: {core}"
    moved = {"rose": "fires higher", "dropped": "fires lower", "spread": "spreads wider",
             "narrowed": "narrows", "changed shape": "changed shape"}[s.direction]
    if verdict == "FAIL":
        return f"{_what(t)} {moved} on this batch: {core} (Holm p={p_holm:.1e})"
    if _large(s, st):
        return f"{_what(t)} {moved}: {core}; as large as a FAIL but not significant after Holm (p={p_holm:.2g})"
    return f"{_what(t)} {moved}, a small but consistent change: {core} (BH p={p_bh:.2g})"


def _evidence(values: np.ndarray, ref: np.ndarray, s: NeuronShift, names: list[str], k: int) -> dict:
    """The batch images where the neuron moved most (in the direction it moved) and both histograms."""
    z = (values - s.mean_reference) / (s.sd_reference if s.sd_reference > 0 else 1.0)
    direction = s.direction
    if direction == "rose":
        order = np.argsort(-z, kind="stable")
    elif direction == "dropped":
        order = np.argsort(z, kind="stable")
    else:
        order = np.argsort(-np.abs(z), kind="stable")
    ref_sorted = np.sort(ref)
    images = []
    for i in order[:k]:
        pct = float(np.searchsorted(ref_sorted, values[i], side="left") + np.searchsorted(ref_sorted, values[i], side="right")) / (2 * len(ref))
        images.append({"index": int(i), "name": names[i], "value": float(values[i]), "reference_percentile": pct})
    lo, hi = float(min(values.min(), ref.min())), float(max(values.max(), ref.max()))
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, 25)
    return {"direction": direction, "images": images,
            "hist": {"edges": edges.tolist(), "reference": np.histogram(ref, edges)[0].tolist(),
                     "batch": np.histogram(values, edges)[0].tolist()}}


def _groups(verdicts: list[NeuronVerdict], targets: list[NeuronTarget], shifts: dict[str, NeuronShift]) -> list[dict]:
    """Moved neurons (FAIL/WARN) grouped by layer and direction, largest groups first."""
    per_layer = defaultdict(int)
    for t in targets:
        per_layer[t.layer] += 1
    groups: dict[tuple[str, str], list[NeuronVerdict]] = defaultdict(list)
    for v in verdicts:
        if v.verdict != "PASS":
            groups[(v.layer, shifts[v.neuron_id].direction)].append(v)
    out = []
    for (layer, direction), members in groups.items():
        out.append({"layer": layer, "direction": direction, "kind": members[0].kind,
                    "neurons": [m.neuron_id for m in members], "registered": per_layer[layer],
                    "median_shift": float(np.median([shifts[m.neuron_id].shift for m in members]))})
    return sorted(out, key=lambda g: (-len(g["neurons"]), g["layer"]))


def _summary(verdict: str, groups: list[dict], joint: dict, layers: dict) -> str:
    if not groups and verdict == "PASS":
        return "every registered neuron responds as on the reference window"
    parts = []
    for g in groups[:4]:
        what = "logits" if g["kind"] == "class" else "channels"
        share = "all" if len(g["neurons"]) == g["registered"] else f"{len(g['neurons'])} of {g['registered']}"
        parts.append(f"{share} registered {what} in {g['layer']} {g['direction']} (median {g['median_shift']:+.2f} SD: "
                     f"{', '.join(g['neurons'][:5])}{' ...' if len(g['neurons']) > 5 else ''})")
    if joint.get("verdict") != "PASS":
        parts.append(f"the joint distribution of the registered neurons moved (MMD {joint['ratio']:.1f}x its null, "
                     f"p={joint['p_value']:.1e})")
    if layers.get("verdict") not in (None, "PASS"):
        parts.append(layers["reason"])
    return "; ".join(parts)


def _layers_reason(ls: LayersShift, verdict: str) -> str:
    top = ls.strongest
    chans = ", ".join(f"c{int(c)} {d:+.2f} SD" for c, d in top.top_channels[:3])
    moved = sum(x.p_value < 0.01 for x in ls.layers)
    head = {"FAIL": "the whole layers moved", "WARN": "the whole layers moved a little",
            "PASS": "the whole layers are within the reference"}[verdict]
    return (f"{head} ({ls.n_batch} vs {ls.n_reference} photographs, {len(ls.layers)} layer(s), {moved} at p < 0.01): "
            f"strongest {top.layer} over {top.channels} channels, mean squared standardised difference "
            f"{top.ratio:.2f}x its permutation null (p={top.p_value:.1e}; family p={ls.p_value:.1e}); "
            f"largest channels {chans}")


def judge_batch(batch_values: np.ndarray, reference: ReferenceWindow, targets: list[NeuronTarget],
                batch_names: list[str], settings: WatchConfig | None = None, n_features: int = 256,
                batch_layers: dict[str, np.ndarray] | None = None, n_permutations: int = 500) -> BatchVerdict:
    """Verdicts of a batch (`batch_values` [n, p], columns in the order of `targets`) against the
    reference window (same columns), with the statistical settings of a model's `watch:` config (alpha,
    alpha_warn, shift_fail, tail_fail, power, evidence_images, seed); `n_features`: random features of
    the joint test. `batch_layers` ({layer: [n, C]} spatial means, one row per batch photograph) with
    `reference.layers` adds the whole-layer test (`n_permutations` shuffles of photographs)."""
    st = settings or WatchConfig()
    b = np.asarray(batch_values, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != len(targets) or reference.values.shape[1] != len(targets):
        raise ValueError(f"batch values {b.shape} and reference {reference.values.shape} need one column per "
                         f"neuron ({len(targets)})")
    shifts = {t.neuron_id: neuron_shift(b[:, j], reference.values[:, j], reference.units)
              for j, t in enumerate(targets)}
    joint = joint_shift(b, reference.values, reference.units, n_features=n_features, seed=st.seed)
    p_all = [shifts[t.neuron_id].p_value for t in targets]
    joint_p = joint.p_value if np.isfinite(joint.p_value) else 1.0
    common = sorted(set(batch_layers or {}) & set(reference.layers))
    ls = (layers_shift({k: batch_layers[k] for k in common}, {k: reference.layers[k] for k in common},
                       n_permutations, st.seed) if common else None)
    family = p_all + [joint_p] + ([ls.p_value] if ls else [])
    p_holm = holm(family)
    p_bh = benjamini_hochberg(family)
    n = len(b)
    alpha_1 = st.alpha / (len(family)) / 3                 # Holm's first step, three parts per neuron
    v_ref = design_variance(reference.values, reference.units)
    verdicts = []
    for j, t in enumerate(targets):
        s = shifts[t.neuron_id]
        if p_holm[j] < st.alpha and _large(s, st):
            verdict = "FAIL"
        elif p_bh[j] < st.alpha_warn:
            verdict = "WARN"
        else:
            verdict = "PASS"
        stats = s.as_dict()
        stats.update(p_fail_holm=float(p_holm[j]), p_warn_bh=float(p_bh[j]),
                     detectable_shift=detectable_shift(s.sd_reference, float(v_ref[j]), n, alpha_1, st.power),
                     images_needed=images_needed(s.sd_reference, float(v_ref[j]), st.shift_fail, alpha_1, st.power))
        verdicts.append(NeuronVerdict(t.neuron_id, t.layer, t.index, t.kind, verdict,
                                      _reason(t, s, verdict, p_holm[j], p_bh[j], st), stats,
                                      _evidence(b[:, j], reference.values[:, j], s, batch_names, st.evidence_images)))
    jj = len(targets)
    joint_verdict = "FAIL" if p_holm[jj] < st.alpha else ("WARN" if p_bh[jj] < st.alpha_warn else "PASS")
    jd = {**joint.as_dict(), "p_fail_holm": float(p_holm[jj]), "p_warn_bh": float(p_bh[jj]), "verdict": joint_verdict}
    ld: dict = {}
    if ls is not None:
        lv = "FAIL" if p_holm[-1] < st.alpha else ("WARN" if p_bh[-1] < st.alpha_warn else "PASS")
        ld = {**ls.as_dict(), "id": LAYERS_ID, "p_fail_holm": float(p_holm[-1]), "p_warn_bh": float(p_bh[-1]),
              "verdict": lv, "reason": _layers_reason(ls, lv)}
    elif reference.layers or batch_layers:
        ld = {"id": LAYERS_ID, "verdict": "NOT RUN",
              "reason": "the whole-layer test did not run: the reference window has no per-photograph layer rows "
                        "for this batch's layers (the batches reference before their layers were cached)"}
    top = sorted(targets, key=lambda t: -abs(shifts[t.neuron_id].shift))[:4]
    jd["reason"] = (f"joint test over {len(targets)} neurons: MMD {joint.ratio:.2f}x its null expectation "
                    f"(p={joint.p_value:.2g}); largest mean shifts: "
                    + ", ".join(f"{t.neuron_id} {shifts[t.neuron_id].shift:+.2f} SD" for t in top))
    groups = _groups(verdicts, targets, shifts)
    counts = {v: sum(1 for x in verdicts if x.verdict == v) for v in ("FAIL", "WARN")}
    others = (joint_verdict, ld.get("verdict"))
    verdict = "FAIL" if counts["FAIL"] or "FAIL" in others else (
        "WARN" if counts["WARN"] or "WARN" in others else "PASS")
    detect = [v.statistics["detectable_shift"] for v in verdicts]
    needed = [v.statistics["images_needed"] for v in verdicts]
    power = {"shift_fail": st.shift_fail, "power": st.power, "alpha": st.alpha,
             "detectable_shift_median": float(np.median(detect)), "images_needed_median": float(np.median(needed)),
             "statement": _power_statement(n, detect, needed, st)}
    ref = {"kind": reference.kind, "description": reference.description, "sha256": reference.sha256,
           "n_images": int(len(reference.values)), "n_units": reference.n_units,
           "layer_photographs": int(len(next(iter(reference.layers.values())))) if reference.layers else 0,
           **{k: reference.meta[k] for k in ("limits", "cache", "cache_key") if k in reference.meta}}
    return BatchVerdict(verdict, verdicts, jd, groups, _summary(verdict, groups, jd, ld), power,
                        n, ref, ld)


def _power_statement(n: int, detect: list[float], needed: list[float], st: WatchConfig) -> str:
    med_d, med_n = float(np.median(detect)), float(np.median(needed))
    if np.isfinite(med_n):
        need = f"needs {med_n:.0f} images"
    else:
        need = ("cannot be caught at any batch size: the reference window itself is too uncertain "
                "(give it more photographs)")
    return (f"with {n} images a neuron's mean shift of {med_d:.2f} reference SDs is caught with "
            f"{st.power:.0%} power (median over neurons); a shift of {st.shift_fail:.2f} SD {need}")
