"""What the MLflow run of one model version shows, computed from the store's content (pure: no MLflow here).

Each item has a ledger key and a digest (storage/schema.py `mlflow_logged`): the MLflow mirror logs an item only
when its digest differs from what the run already holds, so an unchanged re-audit logs nothing.

Names, chosen so that the MLflow UI can sort, filter and chart runs (one run per model version):
- metrics, per neuron: activation statistics on the probe set (`<neuron>.mean`, `.std`, `.frac_active`, `.n`,
  `.q0.5`, ...); drift against each baseline (`<neuron>.vs<baseline>.spearman`, ...,
  `<neuron>.vs<baseline>.verdict_code`); a headline per neuron: `<neuron>.verdict_code` (the worst over its
  baselines) and its drift statistics against the predecessor (`<neuron>.spearman`, ...); VITAL's final loss
  (`<neuron>.vital.seed0.final_loss`).
- metrics, per version: `fail_count`, `warn_count`, `pass_count` (neurons by their worst verdict),
  `vs<baseline>.fail_count` etc., `neurons_audited`, `unaudited_count`.
- tags: `neuron_audit.verdict` (FAIL | WARN | PASS | none), `neuron_audit.failed_neurons`,
  `neuron_audit.unaudited_neurons` (for `tags.neuron_audit.verdict = 'FAIL'` filters).
- images (`log_image`, one key per neuron, method and seed, steps = audit run ids): `<neuron>.vital.seed0` and
  `<neuron>.vital.seed0.mask`.
- artifacts: `compare/<baseline>_vs_<version>.json` and `.html` (the compare report), `config.json` (the model's
  audit configuration).
Verdict codes: PASS 0, WARN 1, FAIL 2.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import re
from typing import Any, Iterable, Mapping

TAG = "neuron_audit"
VERDICT_CODES = {"PASS": 0, "WARN": 1, "FAIL": 2}
REPORT_VOLATILE_KEYS = ("created_at", "report_path", "drift_ids")
_KEY_RE = re.compile(r"[^\w\-. /]")
_MAX_TAG_LEN = 5000


def metric_key(key: str) -> str:
    """MLflow accepts letters, digits, _ - . space and /; anything else becomes _."""
    return _KEY_RE.sub("_", key)[:250]


def name_part(value: str) -> str:
    """A version label as part of a metric key or file name (`vs1.2`, `1_vs_2.json`)."""
    return re.sub(r"[^\w.-]+", "_", str(value)).strip("._") or "_"


def digest(obj: Any) -> str:
    """Content hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def predecessor_row(rows: list[dict]) -> dict:
    """Of one neuron's drift rows (one per baseline), the one against the newest baseline (its predecessor:
    a candidate is compared with earlier versions only)."""
    return max(rows, key=lambda d: (d.get("baseline_registered_at") or "", str(d["baseline"])))


def worst_verdict(verdicts: Iterable[str]) -> str | None:
    known = [v for v in verdicts if v in VERDICT_CODES]
    return max(known, key=VERDICT_CODES.__getitem__) if known else None


def version_metrics(content: Mapping, neuron_errors: Mapping[str, str] | None = None) -> dict[str, float]:
    """The metrics of a version's run (see the module docstring), finite values only."""
    out: dict[str, Any] = {}
    for nid, st in content["stats"].items():
        for k in ("mean", "std", "frac_active", "n"):
            out[f"{nid}.{k}"] = st.get(k)
        for q, val in (st.get("quantiles") or {}).items():
            out[f"{nid}.q{q}"] = val
    by_neuron: dict[str, list[dict]] = {}
    by_baseline: dict[str, dict[str, int]] = {}
    for d in content["drift"]:
        prefix = f"{d['neuron_id']}.vs{name_part(d['baseline'])}"
        for k, val in d["statistics"].items():
            out[f"{prefix}.{k}"] = val
        out[f"{prefix}.verdict_code"] = VERDICT_CODES.get(d["verdict"])
        by_neuron.setdefault(d["neuron_id"], []).append(d)
        counts = by_baseline.setdefault(name_part(d["baseline"]), {v: 0 for v in VERDICT_CODES})
        if d["verdict"] in counts:
            counts[d["verdict"]] += 1
    totals = {v: 0 for v in VERDICT_CODES}
    for nid, rows in by_neuron.items():
        worst = worst_verdict(r["verdict"] for r in rows)
        if worst is None:
            continue
        totals[worst] += 1
        out[f"{nid}.verdict_code"] = VERDICT_CODES[worst]
        for k, val in predecessor_row(rows)["statistics"].items():
            out.setdefault(f"{nid}.{k}", val)      # a probe statistic of the same name keeps its key
    if by_neuron:
        for verdict, n in totals.items():
            out[f"{verdict.lower()}_count"] = n
        for base, counts in by_baseline.items():
            for verdict, n in counts.items():
                out[f"vs{base}.{verdict.lower()}_count"] = n
    for v in content["visualizations"]:
        out[f"{v['neuron_id']}.{v['method']}.seed{v['seed']}.final_loss"] = v.get("final_loss")
    out["neurons_audited"] = len(content["stats"])
    if neuron_errors is not None:
        out["unaudited_count"] = len(neuron_errors)
    return {metric_key(k): f for k, v in out.items() if (f := _finite(v)) is not None}


def version_tags(content: Mapping, neuron_errors: Mapping[str, str] | None = None) -> dict[str, str]:
    """The outcome tags of a version's run."""
    worst: dict[str, str] = {}
    for d in content["drift"]:
        w = worst_verdict([d["verdict"], worst.get(d["neuron_id"], "")])
        if w:
            worst[d["neuron_id"]] = w
    tags = {f"{TAG}.verdict": worst_verdict(worst.values()) or "none",
            f"{TAG}.failed_neurons": ",".join(sorted(n for n, v in worst.items() if v == "FAIL"))[:_MAX_TAG_LEN] or "-",
            f"{TAG}.weights_sha256": content.get("weights_sha256") or "",
            f"{TAG}.model_version_id": str(content["model_version_id"])}
    if neuron_errors is not None:
        tags[f"{TAG}.unaudited_neurons"] = ("; ".join(f"{k}: {v}" for k, v in sorted(neuron_errors.items()))
                                            [:_MAX_TAG_LEN] or "-")
    return tags


def registered_version_tags(content: Mapping, mlflow_run_id: str, *, run_url: str | None = None,
                            dashboard_url: str | None = None) -> dict[str, str]:
    """Tags for the registered model version the audited version came from, shown beside the version in the
    MLflow UI: its verdict (worst over its comparisons), the failed neurons, the counts, the MLflow run and,
    when the UIs' URLs are known, links to the run (`run_url`) and to the dashboard (`dashboard_url`, a page
    from `dashboard_page`)."""
    metrics = version_metrics(content)
    tags = version_tags(content)
    out = {f"{TAG}.verdict": tags[f"{TAG}.verdict"], f"{TAG}.failed_neurons": tags[f"{TAG}.failed_neurons"],
           f"{TAG}.fail_count": str(int(metrics.get("fail_count", 0))),
           f"{TAG}.warn_count": str(int(metrics.get("warn_count", 0))),
           f"{TAG}.pass_count": str(int(metrics.get("pass_count", 0))),
           f"{TAG}.neurons_audited": str(int(metrics.get("neurons_audited", 0))),
           f"{TAG}.mlflow_run_id": mlflow_run_id}
    if run_url:
        out[f"{TAG}.mlflow_run_url"] = run_url
    if dashboard_url:
        out[f"{TAG}.dashboard_url"] = dashboard_url
    return out


def dashboard_page(dashboard_url: str | None, model: str, version: str, content: Mapping) -> str | None:
    """The dashboard page of a version's worst comparison (`/models/<model>/compare/<baseline>/<version>`), or
    the model's page when it has no comparison; None without a dashboard URL."""
    if not dashboard_url:
        return None
    from urllib.parse import quote

    base = f"{dashboard_url.rstrip('/')}/models/{quote(str(model), safe='')}"
    rows = list(content.get("drift") or [])
    if not rows:
        return base
    worst = max(rows, key=lambda d: (VERDICT_CODES.get(d["verdict"], -1), d.get("baseline_registered_at") or ""))
    return f"{base}/compare/{quote(str(worst['baseline']), safe='')}/{quote(str(version), safe='')}"


def image_items(content: Mapping) -> list[dict]:
    """[dict(key, path, digest, viz_id, mask)] for `log_image`: each visualization and its mask. The digest is the
    content-addressed artifact path, so a re-rendered identical image is not logged again."""
    items = []
    for v in content["visualizations"]:
        key = metric_key(f"{v['neuron_id']}.{v['method']}.seed{v['seed']}").replace(" ", "_")
        items.append({"key": key, "path": v["image"], "digest": v["image_rel"], "viz_id": v["id"], "mask": False})
        if v.get("mask"):
            items.append({"key": f"{key}.mask", "path": v["mask"], "digest": v["mask_rel"], "viz_id": v["id"],
                          "mask": True})
    return items


def stable_report(report: Mapping) -> dict:
    """The compare report without what changes on every recompute (timestamp, local paths, row ids)."""
    return {k: v for k, v in report.items() if k not in REPORT_VOLATILE_KEYS}


def report_html(report: Mapping) -> str:
    """The compare report as one self-contained HTML page (MLflow's artifact view renders it)."""
    esc = html.escape
    stat_names = sorted({k for n in report.get("neurons", []) for k in (n.get("statistics") or {})})
    colors = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else esc(str(v)))

    rows = []
    for n in report.get("neurons", []):
        verdict = str(n.get("verdict"))
        cells = "".join(f"<td>{fmt((n.get('statistics') or {}).get(k))}</td>" for k in stat_names)
        rows.append(f"<tr><td>{esc(str(n.get('id')))}</td><td>{esc(str(n.get('kind', '')))} "
                    f"{esc(str(n.get('layer', '')))}[{esc(str(n.get('index', '')))}]</td>"
                    f"<td style='color:{colors.get(verdict, '#000')};font-weight:bold'>{esc(verdict)}</td>{cells}"
                    f"<td>{fmt(n.get('matched_index'))}</td><td>{esc(str(n.get('reason', '')))}</td></tr>")
    summary = ", ".join(f"{k} {v}" for k, v in (report.get("summary") or {}).items())
    errors = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in (report.get("errors") or {}).items())
    head = "".join(f"<th>{esc(k)}</th>" for k in ["neuron", "unit", "verdict", *stat_names, "matched index", "reason"])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>neuron-audit compare</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}</style></head><body>"
            f"<h2>{esc(str(report.get('model')))}: {esc(str(report.get('baseline')))} → "
            f"{esc(str(report.get('candidate')))}</h2><p>{esc(summary)} · probe set "
            f"{esc(str(report.get('probe_set_sha256', ''))[:12])}</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            + (f"<h3>Not audited</h3><ul>{errors}</ul>" if errors else "") + "</body></html>")


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'neurons.cat.layer': 'classifier', ...} with string values (MLflow's 6000-char limit)."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, Mapping) for v in obj):
        for i, v in enumerate(obj):
            name = v.get("name") or v.get("id") or v.get("version") or i
            out.update(flatten_params(v, f"{prefix}{name}."))
    else:
        val = json.dumps(obj) if isinstance(obj, (list, tuple)) else ("" if obj is None else str(obj))
        out[metric_key(prefix.rstrip("."))] = val[:6000]
    return out
