"""PASS / WARN / FAIL from the typed evidence of each neuron, and the reason a person can act on.

Rules (per neuron; rates from ThresholdsConfig):
- FAIL when any evidence about the neuron's own response (every registered kind with `own`:
  rank, retention, magnitude, content, spatial, partner; audit.drift.evidence_kinds) is beyond the benign null at `false_alarm_rate`; or when its top-1 margin is, unless
  every class that took or gave the top-1 is a registered neuron that FAILs on its own response
  (then the change is that neuron's, and this one PASSes with a note); or when the visual
  evidence is strong (`cross_activation_fail`); or when an effect size crosses a user FAIL
  threshold (spearman_fail, topk_jaccard_fail, wasserstein_fail) while some evidence is also
  beyond the null at `warn_rate`.
- WARN when evidence is beyond the null at `warn_rate` (not attributed elsewhere), or the visual
  evidence is moderate.
- PASS otherwise. A channel found at another index (audit.drift.identity) whose function is
  within the null PASSes and reports `matched_index`.
There is no correction across neurons: the false-alarm rate is per neuron, so registering more
neurons does not make any FAIL harder to reach; a compare of M unchanged neurons has on average
M x false_alarm_rate false FAILs.
"""
from __future__ import annotations

from ..config import ThresholdsConfig
from ..records import DriftResult
from .evidence import Evidence, NeuronComparison, to_jsonable
from .evidence_kinds import argmax_sentence, evidence_kind, interval, kind_names, title


def _photos(photos: list[tuple[str, int]], k: int, limit: int = 2) -> str:
    if not photos:
        return "no images"
    parts = [f"{name} ({count}/{k})" for name, count in photos[:limit]]
    return "crops of " + ", ".join(parts)


def _sentence(e: Evidence, c: NeuronComparison, class_names: dict[int, str]) -> str:
    """The registered kind's sentence (audit.drift.evidence_kinds), or a plain one."""
    kind = evidence_kind(e.kind)
    text = kind.sentence(e, c, class_names) if kind is not None and kind.sentence is not None else ""
    return text or f"{e.kind} {e.value:.3g} beyond the benign null"


def _topk_sentence(c: NeuronComparison) -> str:
    tk = c.topk
    if tk is None or tk.overlap == tk.k:
        return ""
    return (f"top-activating probes changed from {_photos(tk.photos_a, tk.k)} to {_photos(tk.photos_b, tk.k)} "
            f"({tk.k - tk.overlap} of {tk.k} new)")


def _support_sentence(c: NeuronComparison) -> str:
    s = c.support
    if s is None:
        return ""
    text = f"rests on {s.n_photographs} photographs ({s.n_images} probe images)"
    if s.carried_by and len(s.carried_by) <= max(1, s.n_photographs // 3):
        text += "; half of the change is on " + ", ".join(f"{p} ({share:.0%})" for p, share in s.carried_by)
    if s.resample_support is not None and s.resample_support < 0.95:
        text += (f"; holds in {s.resample_support:.0%} of photograph resamples: a fact about these photographs, "
                 f"not yet evidence beyond them")
    return text


def decide(c: NeuronComparison, failing_classes: set[tuple[str, int]], t: ThresholdsConfig) -> tuple[str, str | None]:
    """(verdict, attribution note) of one neuron; `failing_classes`: (layer, index) of the
    registered class neurons whose own response FAILs in this compare."""
    if c.constant is not None:
        return ("PASS" if c.constant.same else "FAIL"), None
    own_fail = c.at_level("fail", kind_names(own_only=True))
    margin = [e for e in c.evidence if e.kind == "margin"]
    attribution = None
    margin_counts = bool(margin) and margin[0].level != "none"
    if margin_counts and not own_fail and c.argmax is not None:
        others = set(c.argmax.lost_to) | set(c.argmax.gained_from)
        if others and all((c.target.layer, int(j)) in failing_classes for j in others):
            margin_counts = False
            attribution = sorted(int(j) for j in others)
    any_warn = bool(c.at_level("warn", kind_names(own_only=True))) or margin_counts
    visual = c.visual.level if c.visual is not None else "none"
    effect_fail = any(level == "fail" for level, _ in c.effect_flags) and any_warn
    if own_fail or (margin_counts and margin[0].level == "fail") or visual == "fail" or effect_fail:
        return "FAIL", attribution
    if any_warn or visual == "warn":
        return "WARN", attribution
    return "PASS", attribution


def _kinds(evidence: list[Evidence], level: str = "fail") -> str:
    return ", ".join(title(e.kind) for e in evidence if e.level == level)


def _moved_prefix(c: NeuronComparison) -> str:
    """The move, and what the registered index shows now (both are in the report)."""
    how = (f" (held-out Spearman {c.identity.heldout_spearman:.2f}, chosen on other photographs)"
           if c.identity is not None else "")
    text = f"channel moved to index {c.matched_index}{how}"
    reg = c.registered
    if reg is not None and reg.constant is not None and not reg.constant.same:
        text += (f"; index {reg.index} is now constant" if reg.constant.which == "candidate"
                 else f"; index {reg.index} now responds to inputs")
    elif reg is not None and _kinds(reg.evidence):
        text += f"; at index {reg.index} it is beyond the benign null ({_kinds(reg.evidence)})"
    return text + "; update the registry index; "


def _missing_sentence(c: NeuronComparison) -> str:
    if not c.missing:
        return ""
    return "not measured: " + "; ".join(f"{title(m.kind)} ({m.kind}: {m.why})"
                                        for m in c.missing)


def _identity_sentence(c: NeuronComparison) -> str:
    """Why a closest channel elsewhere was not accepted as a move."""
    m = c.identity
    if m is None or c.matched_index is not None or c.target.kind != "inner" or not m.agreed \
            or m.index == c.target.index:
        return ""
    closest = f"closest candidate channel {m.index} (held-out Spearman {m.heldout_spearman:.2f})"
    if m.destination_left is False:
        return (f"{closest} is the baseline's own channel {m.index}, still at its index (a near-duplicate): "
                f"changed, not moved")
    if m.back_agrees is False:
        back = f"baseline channel {m.back_index}" if m.back_index is not None else "no one baseline channel"
        return f"{closest} matches {back} better, not this one: changed, not moved"
    return f"{closest} does not behave like it either: changed, not moved"


def _pass_head(c: NeuronComparison, what: str) -> str:
    """How a PASS begins. "function preserved" only when the effect sizes agree; a PASS whose effect sizes
    cross a user FAIL threshold (a low Spearman, a new top-k) passes because benign re-saves move this
    neuron as much (its benign null is wide, as for a channel that is almost constant on the probe set),
    and the reason says so instead of claiming the function was preserved."""
    crossed = [text for level, text in c.effect_flags if level == "fail"]
    if not crossed:
        return "function preserved: "
    return (f"changed by its effect sizes ({'; '.join(crossed)}), but benign re-saves move this {what} as much, "
            f"so the probe set cannot tell this change from a re-save (a larger probe set, or one where it "
            f"fires more, can): ")


def reason(c: NeuronComparison, verdict: str, attribution: list[int] | None, class_names: dict[int, str]) -> str:
    what = "logit" if c.target.kind == "class" else "channel"
    prefix = ""
    if c.statistic == "mean" and c.constant_value is not None:
        prefix = (f"its spatial max is {c.constant_value:.2f} on every probe image, so it is audited on its "
                  f"spatial mean; ")
    if c.matched_index is not None:
        prefix += _moved_prefix(c)
    if c.constant is not None:
        if c.constant.same:
            return prefix + f"{what} is constant on the probe set in both versions (dead channel)"
        return prefix + (f"{what} is constant on the probe set in the {c.constant.which} version: "
                         + ("it no longer responds to inputs" if c.constant.which == "candidate"
                            else "it now responds to inputs"))
    st = c.statistics
    if verdict == "PASS":
        core = f"Spearman {st['spearman']:.2f}{interval(c, 'spearman')}; top-{int(st['topk_k'])} overlap " \
               f"{int(st['topk_overlap'])}/{int(st['topk_k'])}; W/sigma {st['wasserstein_norm']:.2f}"
        top = c.strongest(kind_names(own_only=True) if attribution else None)
        if top is not None:
            scope = "its own response is" if attribution else "all evidence"
            core += f"; {scope} within the benign null (closest: {top.kind} at {top.excess:.2f} of its bound)"
        text = prefix + _pass_head(c, what) + core
        if attribution and c.argmax is not None:
            text += ("; but it is " + argmax_sentence(c, class_names)
                     + ": that change is the other neuron's, which FAILs")
        if c.missing:
            text += "; " + _missing_sentence(c)
        return text
    level = "fail" if verdict == "FAIL" else "warn"
    kinds = [e for e in c.at_level(level) if not (attribution and e.kind == "margin")] or c.at_level("warn")
    parts = []
    if any(e.kind in ("rank", "retention", "content") for e in kinds[:3]):
        parts.append(_topk_sentence(c))
    parts.extend(_sentence(e, c, class_names) for e in kinds[:2])
    if c.argmax is not None and not any(e.kind == "margin" for e in kinds[:2]) and (c.argmax.lost or c.argmax.gained):
        parts.append(argmax_sentence(c, class_names))
    if c.similar_logit is not None:
        j, rho = c.similar_logit
        parts.append(f"the candidate's logit {j} now behaves like the baseline's logit {c.target.index} "
                     f"(Spearman {rho:.2f}): class rows swapped or relabelled?")
    if _identity_sentence(c):
        parts.append(_identity_sentence(c))
    if not c.at_level(level, kind_names(own_only=True)):          # the verdict came from a user threshold: say which
        parts.extend(text for lv, text in c.effect_flags if lv == level)
    if c.visual is not None and c.visual.level != "none":
        parts.append(c.visual.text)
    if not parts:
        top = c.strongest()
        parts.append(f"borderline: {top.kind} at {top.excess:.2f} of its fail bound" if top else "borderline")
    if verdict == "WARN" and any(e.level == "warn" for e in kinds):
        parts.append("beyond the benign null at the warn rate, not at the fail rate")
    support = _support_sentence(c)
    if support:
        parts.append(support)
    parts.append(_missing_sentence(c))
    return prefix + "; ".join(p for p in parts if p)


def assign_verdicts(comparisons: list[NeuronComparison], thresholds: ThresholdsConfig,
                    class_names: dict[int, str] | None = None) -> list[DriftResult]:
    """DriftResults of the compared neurons (see the module docstring for the rules)."""
    t = thresholds
    names = dict(class_names or {})
    for c in comparisons:
        if c.target.kind == "class":
            names.setdefault(c.target.index, c.target.neuron_id)
    failing = {(c.target.layer, c.target.index) for c in comparisons
               if c.target.kind == "class" and c.constant is None and c.at_level("fail", kind_names(own_only=True))}
    out = []
    for c in comparisons:
        verdict, attribution = decide(c, failing, t)
        st = dict(c.statistics)
        for e in c.evidence:
            st[f"z_{e.kind}"] = e.z
            st[f"bound_{e.kind}"] = e.fail_bound
        evidence = to_jsonable(c)
        evidence["attributed_to"] = attribution
        out.append(DriftResult(neuron_id=c.target.neuron_id, layer=c.target.layer, index=c.target.index,
                               kind=c.target.kind, verdict=verdict, statistics=st, matched_index=c.matched_index,
                               reason=reason(c, verdict, attribution, names), ci=c.ci, evidence=evidence))
    return out
