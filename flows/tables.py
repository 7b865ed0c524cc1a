"""The compare report as a terminal table (rich), for the CLI; the report itself is audit/report.py."""
from __future__ import annotations


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
