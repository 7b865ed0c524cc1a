"""The compare report (`neuron-audit compare --json`, docs/compare-report.md) and its table."""
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


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (abs(v) < 10 ** -digits and v != 0):
        return f"{v:.1e}"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


def verdict_table(report: dict):
    """A rich Table that fits an 80-column terminal: one row per neuron with its
    statistics; the reasons of the neurons that did not PASS follow as a caption."""
    from rich.table import Table

    s = report.get("summary", {})
    title = (f"{report.get('model')}: {report.get('baseline')} -> {report.get('candidate')}  "
             f"(PASS {s.get('PASS', 0)}, WARN {s.get('WARN', 0)}, FAIL {s.get('FAIL', 0)})")
    style = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}
    notes = [f"[{style[n['verdict']]}]{n['id']}[/]: {n.get('reason', '')}"
             for n in report.get("neurons", []) if n.get("verdict") in ("WARN", "FAIL")]
    probe = report.get("probe") or {}
    if probe and not probe.get("enough_photographs", True):
        notes.append(f"[yellow]probe set[/]: {probe.get('power', '')}")
    from rich import box

    table = Table(title=title, caption="\n".join(notes) or None, caption_justify="left", show_lines=False,
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    # ρ: Spearman, J: top-k Jaccard, W/σ: normalised Wasserstein, xact: cross-activation, vis: visual distance
    for col, width in (("neuron", 12), ("layer[index]", 15), ("verdict", 7), ("ρ", 5), ("J", 5), ("W/σ", 5),
                       ("xact", 5), ("vis", 5)):
        numeric = width == 5
        table.add_column(col, justify="right" if numeric else "left", no_wrap=True, min_width=width,
                         max_width=None if not numeric else width)
    for n in report.get("neurons", []):
        st = n.get("statistics", {})
        where = f"{n.get('layer')}[{n.get('index')}]"
        if n.get("matched_index") is not None:
            where += f" -> [{n['matched_index']}]"
        v = n.get("verdict", "?")
        table.add_row(str(n.get("id")), where, f"[{style.get(v, '')}]{v}[/]" if v in style else v,
                      _fmt(st.get("spearman")), _fmt(st.get("topk_jaccard")), _fmt(st.get("wasserstein_norm")),
                      _fmt(st.get("cross_activation")), _fmt(st.get("visual_distance")))
    return table
