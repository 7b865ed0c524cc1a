"""The evidence part of the neuron page: why the latest comparison reached its verdict.

The compare report saved with each comparison (`AuditStore.load_report`) carries every neuron's
typed evidence (audit.drift.evidence): each kind of evidence against its benign-null bound, the
top-activating probe images of both versions (with the new ones marked), where the top-1 went for
class neurons, how many photographs the verdict rests on and which carry the change."""
from __future__ import annotations

from typing import Any


def _image(links: Any, index: int, names: list, thumbs: list) -> dict:
    i = int(index)
    return {"index": i, "name": names[i] if 0 <= i < len(names) else str(i),
            "image": links.artifact(thumbs[i]) if 0 <= i < len(thumbs) else None}


def evidence_context(store: Any, links: Any, model: str, neuron_id: str, drift_row: dict | None) -> dict | None:
    """Template context of the evidence card for `drift_row` (the neuron's latest comparison), or None
    when no saved report holds evidence for it."""
    if not drift_row or not hasattr(store, "load_report"):
        return None
    baseline, candidate = str(drift_row.get("baseline")), str(drift_row.get("candidate"))
    report = store.load_report(model, baseline, candidate) or {}
    entry = next((n for n in report.get("neurons") or [] if str(n.get("id")) == str(neuron_id)), None)
    evidence = (entry or {}).get("evidence") or {}
    if not evidence.get("evidence") and not evidence.get("topk"):
        return None
    meta = store.probe_set_meta(report.get("probe_set_sha256")) or {} if report.get("probe_set_sha256") else {}
    names, thumbs = meta.get("names") or [], meta.get("thumbnails") or []
    rows = []
    for e in evidence.get("evidence") or []:
        z, bound = e.get("z"), e.get("fail_bound")
        ratio = (z / bound) if isinstance(z, (int, float)) and isinstance(bound, (int, float)) and bound > 0 else None
        rows.append({**e, "ratio": ratio, "width": min(100, round(100 * ratio / 2)) if ratio is not None else 0})
    topk = evidence.get("topk") or {}
    new = set(topk.get("new_in_b") or [])
    top_a = [_image(links, i, names, thumbs) for i in topk.get("top_a") or []]
    top_b = [{**_image(links, i, names, thumbs), "new": i in new} for i in topk.get("top_b") or []]
    dropped = set(topk.get("top_a") or []) - set(topk.get("top_b") or [])
    for item in top_a:
        item["dropped"] = item["index"] in dropped
    probe = report.get("probe") or {}
    return {"baseline": baseline, "candidate": candidate, "verdict": entry.get("verdict"), "reason": entry.get("reason"),
            "rows": rows, "top_a": top_a, "top_b": top_b, "k": topk.get("k"), "overlap": topk.get("overlap"),
            "photos_a": topk.get("photos_a") or [], "photos_b": topk.get("photos_b") or [],
            "argmax": evidence.get("argmax"), "support": evidence.get("support"), "identity": evidence.get("identity"),
            "attributed_to": evidence.get("attributed_to"), "visual": evidence.get("visual"),
            "power": probe.get("power") if probe and not probe.get("enough_photographs", True) else None,
            "null_variants": (report.get("benign_null") or {}).get("variants") or []}
