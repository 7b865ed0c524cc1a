"""The neuron page: what one neuron looks for, version by version (visualizations, top-activating probe
images, activation histograms), and each drift statistic over the comparisons against its threshold
band, with the open alerts and the MLflow and Prefect runs behind each version and comparison.

Eleven queries whatever the history: the model, the neuron's history (six), its open alerts, the
versions' MLflow runs, and the latest comparison's saved report and probe-set record (its evidence).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import svg
from ..errors import NotFound
from ..evidence_view import evidence_context
from ..formatting import fmt_num, float_or, quantile_key, time_key

if TYPE_CHECKING:
    from ..links import Links
    from ..views import Views

STAT_ROWS = ("n", "mean", "std", "frac_active")


def neuron_page(views: "Views", links: "Links", model: str, neuron_id: str) -> tuple[str, dict]:
    """(template, context) of one neuron's page. Raises NotFound for an unknown model or neuron."""
    store = views.store
    m = views.require_model(model)
    h = store.neuron_history(model, neuron_id)
    if not h or not h.get("neuron"):
        raise NotFound(f"no neuron {neuron_id!r} registered for model {model!r}")
    mlflow = store.mlflow_runs_by_version(model)
    versions = [_version_column(views, links, v, mlflow) for v in h.get("versions") or []]
    viz_rows = _viz_rows(versions)
    stat_keys: list[str] = []
    for v in versions:
        for k, _ in v["stats_rows"]:
            if k not in stat_keys:
                stat_keys.append(k)
    hist = svg.histogram_overlay([{"label": v["version"], "edges": (v.get("hist") or {}).get("edges"),
                                   "counts": (v.get("hist") or {}).get("counts")} for v in versions])
    drift = sorted(h.get("drift") or [], key=lambda d: (time_key(d.get("created_at")), float_or(d.get("id"), 0)))
    alerts = store.open_alerts(model=model, neuron_id=neuron_id)
    alert_keys = {(str(a.get("baseline")), str(a.get("candidate"))) for a in alerts}
    charts = []
    for spec in views.specs:
        pts = [{"label": f"{d.get('baseline')}→{d.get('candidate')}", "value": (d.get("statistics") or {}).get(spec.key),
                "verdict": d.get("verdict"), "alert": (str(d.get("baseline")), str(d.get("candidate"))) in alert_keys}
               for d in drift]
        if drift and all(p["value"] is None for p in pts):
            continue
        charts.append({"spec": spec, "svg": svg.stat_over_versions(spec, pts)})
    drift_rows = [{**d, "cells": views.stat_cells(d.get("statistics")),
                   "alert": (str(d.get("baseline")), str(d.get("candidate"))) in alert_keys,
                   "prefect": views.run_link("prefect", d.get("flow_run_id"))} for d in reversed(drift)]
    latest = drift[-1] if drift else None
    ctx = views.common(links)
    ctx.update(evidence=evidence_context(store, links, model, neuron_id, latest))   # one report read, latest only
    ctx.update(page_title=f"{h['neuron'].get('neuron_id', neuron_id)} · {model}", model=m, model_name=model,
               neuron=h["neuron"], versions=versions, viz_rows=viz_rows,
               any_mask=any(it["mask"] for row in viz_rows for cell in row["cells"] for it in cell),
               hist_svg=hist, charts=charts, drift=drift_rows, stat_keys=stat_keys,
               latest=latest, alerts=alerts, has_topk=any(v["topk_rows"] for v in versions))
    return "neuron.html", ctx


def _version_column(views: "Views", links: "Links", v: dict, mlflow: dict[str, dict]) -> dict:
    """One version of the history as the page shows it: visualizations (by method, seed), top probes,
    the activation summary rows and the version's MLflow run."""
    out = dict(v)
    out["version"] = str(v.get("version"))
    items = [views.viz_item(viz, links) for viz in v.get("visualizations") or []]
    out["viz_items"] = sorted(items, key=lambda d: (str(d["method"]), float_or(d["seed"], 0)))
    out["topk_rows"] = [{**t, "image": links.artifact(t.get("image_path") or t.get("path"))} for t in v.get("topk") or []]
    rows = []
    st = v.get("stats") or None
    if st:
        rows += [(k, fmt_num(st[k])) for k in STAT_ROWS if k in st]
        for k, val in sorted((st.get("quantiles") or {}).items(), key=lambda kv: quantile_key(kv[0])):
            rows.append((f"q{k}" if not str(k).startswith(("q", "p")) else str(k), fmt_num(val)))
    out["stats_rows"] = rows
    out["stats_map"] = dict(rows)
    out["mlflow"] = views.mlflow_link(mlflow.get(out["version"]))
    return out


def _viz_rows(versions: list[dict]) -> list[dict]:
    """One row per visualization method, one cell (a list of seeds' images) per version."""
    methods: list[str] = []
    for v in versions:
        for it in v["viz_items"]:
            if it["method"] not in methods:
                methods.append(it["method"])
    return [{"method": meth, "cells": [[it for it in v["viz_items"] if it["method"] == meth] for v in versions]}
            for meth in methods]
