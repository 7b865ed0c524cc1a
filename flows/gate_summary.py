"""The gate's Markdown summary, fit for a CI job summary (`$GITHUB_STEP_SUMMARY`) or a pull-request comment:
the outcome in one line, a verdict table, the reasons of every WARN and FAIL with links to the two versions'
visualizations, and what could not be audited. Plain Markdown (tables and links), no HTML, no embedded images:
a job summary shows links, and the images stay where the store keeps them.

Links to images: `{ui.dashboard}/artifacts/<path>` when the dashboard's URL is configured, else the file's path
relative to the summary's folder (so that uploading the store's artifact folder beside the summary keeps them)."""
from __future__ import annotations

import os
from pathlib import Path

OUTCOME = {0: "PASS", 1: "FAIL", 3: "INCOMPLETE"}
_MARK = {"PASS": "✅ PASS", "WARN": "⚠️ WARN", "FAIL": "❌ FAIL"}


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def thumbnail_links(store, model: str, neuron_ids: list[str], versions: list[str], *, dashboard_url: str | None,
                    relative_to: Path | None) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """{neuron: {version: [(label, link)]}}: each stored VITAL image of the neuron in each version."""
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for nid in neuron_ids:
        history = store.neuron_history(model, nid) or {}
        per: dict[str, list[tuple[str, str]]] = {str(v): [] for v in versions}
        for entry in history.get("versions", []):
            if str(entry["version"]) not in per:
                continue
            for z in entry.get("visualizations", []):
                if z.get("method", "vital") != "vital" or not z.get("image_path"):
                    continue
                per[str(entry["version"])].append((f"seed {z['seed']}", _link(store, z["image_path"], dashboard_url,
                                                                               relative_to)))
        out[nid] = per
    return out


def _link(store, rel: str, dashboard_url: str | None, relative_to: Path | None) -> str:
    if dashboard_url:
        return f"{dashboard_url.rstrip('/')}/artifacts/{rel}"
    path = Path(store.artifacts.path(rel)).resolve()
    if relative_to is not None:
        try:
            return Path(os.path.relpath(path, relative_to.resolve())).as_posix()
        except ValueError:            # another drive
            pass
    return path.as_posix()


def gate_markdown(summary: dict, *, code: int, model: str, against: str, candidate: str, source: str,
                  not_audited: list[str], thumbnails: dict | None = None, links: dict | None = None,
                  notes: list[str] | None = None) -> str:
    """The summary page. `summary`: flows/outcome.py's ({"versions", "reports"}); `code`: its exit code;
    `not_audited`: one line per neuron or version that could not be audited; `links`: {label: url} shown
    under the table (MLflow run, dashboard page)."""
    reports = summary.get("reports") or []
    report = reports[0] if reports else {"neurons": [], "summary": {}}
    counts = report.get("summary") or {}
    outcome = OUTCOME.get(code, f"exit {code}")
    if code == 0 and counts.get("WARN"):
        outcome = "PASS (with WARN)"
    head = {"PASS": "✅", "FAIL": "❌", "INCOMPLETE": "⛔"}.get(outcome.split()[0], "✅")
    lines = [f"## {head} neuron-audit gate: {outcome}", "",
             f"**{model}**: candidate `{source}` (version `{candidate}`) against version `{against}` — "
             f"PASS {counts.get('PASS', 0)}, WARN {counts.get('WARN', 0)}, FAIL {counts.get('FAIL', 0)}"
             + (f", not audited {len(not_audited)}" if not_audited else "") + f"; exit code {code}.", ""]
    neurons = report.get("neurons") or []
    if neurons:
        lines += ["| neuron | layer[index] | verdict | ρ | top-k J | W/σ | cross-act. | visual |",
                  "|---|---|---|--:|--:|--:|--:|--:|"]
        for n in neurons:
            st = n.get("statistics") or {}
            where = f"{n.get('layer')}[{n.get('index')}]"
            if n.get("matched_index") is not None:
                where += f" → [{n['matched_index']}]"
            lines.append("| " + " | ".join([_cell(n.get("id")), _cell(where), _MARK.get(n.get("verdict"), _cell(n.get("verdict"))),
                                            _cell(st.get("spearman")), _cell(st.get("topk_jaccard")),
                                            _cell(st.get("wasserstein_norm")), _cell(st.get("cross_activation")),
                                            _cell(st.get("visual_distance"))]) + " |")
        lines.append("")
    flagged = [n for n in neurons if n.get("verdict") in ("WARN", "FAIL")]
    if flagged:
        lines += ["### Reasons", ""]
        for n in sorted(flagged, key=lambda n: n.get("verdict") != "FAIL"):
            lines.append(f"- **{_cell(n['id'])}** {_MARK[n['verdict']]}: {_cell(n.get('reason') or '')}")
            for version, label in ((against, "against"), (candidate, "candidate")):
                shots = ((thumbnails or {}).get(n["id"]) or {}).get(str(version)) or []
                if shots:
                    lines.append(f"  - {label} `{version}`: " + ", ".join(f"[{t}]({u})" for t, u in shots))
        lines.append("")
    if not_audited:
        lines += ["### Not audited", ""] + [f"- {_cell(item)}" for item in not_audited] + [""]
    extra = [f"[{k}]({v})" for k, v in (links or {}).items() if v]
    if extra:
        lines += ["Links: " + " · ".join(extra), ""]
    for note in notes or []:
        lines.append(f"> {_cell(note)}")
    return "\n".join(lines).rstrip() + "\n"
