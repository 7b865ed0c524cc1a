"""The compare page: two versions of a model side by side, neuron by neuron (visualizations A and B,
top probes, statistics against their bands, verdict and reason), filtered and paged. Any two versions
can be compared: without a stored comparison the page shows the images and top probes of both and says
how to compute the verdicts.

Ten queries at most whatever the history: the model, its versions, the comparison's rows, the
neurons (only when nothing is stored), the visualizations of both versions (one query for all
neurons), their top probes (two), the open-alert keys, the MLflow runs, the stored comparisons.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, NotFound
from ..formatting import VERDICTS
from ..listing import NeuronFilter, Pager, sort_neurons
from .picker import version_picker

if TYPE_CHECKING:
    from ..links import Links
    from ..views import Views

ROWS_PER_PAGE = 25
TOP_PROBES = 6
RELATED = 8               # links to other stored comparisons of the same versions


def compare_page(views: "Views", links: "Links", model: str, baseline: str, candidate: str, filt: NeuronFilter,
                 page: Any = 1) -> tuple[str, dict]:
    """(template, context) of the A/B page. NotFound: unknown model or version; BadRequest: A == B."""
    store = views.store
    m = views.require_model(model)
    versions = store.list_versions(model)
    names = [str(v["version"]) for v in versions]
    for label, v in (("baseline", baseline), ("candidate", candidate)):
        if str(v) not in names:
            raise NotFound(f"model {model!r} has no version {v!r} (the {label})")
    if str(baseline) == str(candidate):
        raise BadRequest(f"pick two different versions to compare (both are {baseline!r})")
    rows = store.comparison(model, baseline, candidate)
    stored = bool(rows)
    if not stored:
        rows = [{**n, "verdict": None, "baseline": baseline, "candidate": candidate, "statistics": {},
                 "reason": None, "matched_index": None} for n in store.list_neurons(model)]
    counts = {k: sum(1 for r in rows if str(r.get("verdict") or "").upper() == k) for k in VERDICTS}
    shown = sort_neurons(filt.apply(rows), "severity")
    live = not links.static_mode
    pager = Pager.of(len(shown), page, ROWS_PER_PAGE if live else None)
    if live:
        pager.link(lambda n: links.compare(model, baseline, candidate, page=n, **filt.params()))
    vizs = store.version_visualizations(model, [baseline, candidate])
    topk = store.top_probes(model, [baseline, candidate], limit=TOP_PROBES)
    alerts = store.open_alert_keys(model)
    out = []
    for r in pager.slice(shown):
        nid = str(r.get("neuron_id"))
        a = [views.viz_item(v, links) for v in vizs.get((nid, str(baseline)), [])]
        b = [views.viz_item(v, links) for v in vizs.get((nid, str(candidate)), [])]
        methods = list(dict.fromkeys(it["method"] for it in a + b))
        pairs = [{"method": meth, "a": [it for it in a if it["method"] == meth][:1],
                  "b": [it for it in b if it["method"] == meth][:1]} for meth in methods]
        image = lambda t: {**t, "image": links.artifact(t.get("image_path"))}  # noqa: E731
        out.append({**r, "neuron_id": nid, "pairs": pairs, "any_mask": any(it["mask"] for it in a + b),
                    "topk_a": [image(t) for t in topk.get((nid, str(baseline)), [])],
                    "topk_b": [image(t) for t in topk.get((nid, str(candidate)), [])],
                    "cells": views.stat_cells(r.get("statistics")),
                    "alert": (nid, str(baseline), str(candidate)) in alerts})
    mlflow = store.mlflow_runs_by_version(model)
    flow_runs = list(dict.fromkeys(str(r["flow_run_id"]) for r in rows if r.get("flow_run_id")))
    comps = store.comparisons(model)
    related = [c for c in comps if {str(c["baseline"]), str(c["candidate"])} & {str(baseline), str(candidate)}
               and not (str(c["baseline"]) == str(baseline) and str(c["candidate"]) == str(candidate))][:RELATED]
    created = max((r.get("created_at") for r in rows if r.get("created_at")), default=None) if stored else None
    ctx = views.common(links)
    ctx.update(page_title=f"{model}: {baseline} → {candidate}", model=m, model_name=model, baseline=baseline,
               candidate=candidate, rows=out, counts=counts, stored=stored, created_at=created,
               any_mask=any(r["any_mask"] for r in out), pager=pager, nfilter=filt, choices=NeuronFilter.choices(rows),
               n_rows=len(rows), n_shown=len(shown), others=related,
               picker=version_picker(versions, m.get("champion"), None, baseline, candidate),
               mlflow_a=views.mlflow_link(mlflow.get(str(baseline)), f"v{baseline}"),
               mlflow_b=views.mlflow_link(mlflow.get(str(candidate)), f"v{candidate}"),
               prefect_runs=[views.run_link("prefect", f) for f in flow_runs[:3]])
    return "compare.html", ctx
