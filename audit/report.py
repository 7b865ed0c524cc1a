"""The compare report (`neuron-audit compare --json`, docs/compare-report.md); its terminal table is
flows/tables.py."""
from __future__ import annotations

import math
from datetime import datetime, timezone

from .records import DriftResult

REQUIRED_STATISTICS = ("spearman", "topk_jaccard", "topk_p_value", "wasserstein_norm", "cross_activation",
                       "visual_distance")
VERDICTS = ("PASS", "WARN", "FAIL")


def _json_number(v):
    """JSON has no NaN/inf: those become null."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None


def build_report(model_name: str, baseline: str, candidate: str, probe_sha256: str,
                 results: list[DriftResult]) -> dict:
    """The compare report of docs/compare-report.md. Beyond the required keys, each neuron carries its typed
    evidence (`evidence`, audit.drift.evidence.to_jsonable) and, when `results` is an
    audit.drift.CompareResults, the report says how many photographs the verdicts rest on and
    whether that is enough (`probe`), and what the benign null was (`benign_null`)."""
    neurons = []
    for r in results:
        st = {k: _json_number(r.statistics.get(k)) for k in REQUIRED_STATISTICS}
        st.update({k: _json_number(v) for k, v in r.statistics.items() if k not in st})
        neurons.append({"id": r.neuron_id, "layer": r.layer, "index": int(r.index), "kind": r.kind,
                        "verdict": r.verdict, "statistics": st,
                        "matched_index": None if r.matched_index is None else int(r.matched_index),
                        "reason": r.reason,
                        "ci": {k: [_json_number(x) for x in v] for k, v in (r.ci or {}).items()},
                        "evidence": r.evidence or {}})
    summary = {v: sum(1 for r in results if r.verdict == v) for v in VERDICTS}
    report = {"model": model_name, "baseline": str(baseline), "candidate": str(candidate),
              "probe_set_sha256": probe_sha256, "created_at": datetime.now(timezone.utc).isoformat(),
              "neurons": neurons, "summary": summary}
    if hasattr(results, "power"):
        report["probe"] = {"n_images": int(results.n_images), "n_photographs": int(results.n_photographs),
                           "enough_photographs": bool(results.enough_photographs), "power": results.power}
        report["benign_null"] = {"variants": list(results.null_variants),
                                 "build_seconds": _json_number(results.null_seconds)}
    return report


def exit_code(report: dict) -> int:
    """1 if any neuron FAILs, else 0 (the exit codes of docs/cli.md)."""
    return 1 if any(n.get("verdict") == "FAIL" for n in report.get("neurons", [])) else 0
