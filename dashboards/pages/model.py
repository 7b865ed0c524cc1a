"""The model page: every registered neuron with its latest verdict and thumbnail (filtered, sorted,
paged), the version picker for any A/B compare, the stored comparisons and the versions with their
MLflow runs.

Eight queries whatever the history: the model, its neurons, their latest verdicts, their
thumbnails (one query for all), the open-alert keys, the comparisons (counted in SQL), the
versions and their MLflow runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..formatting import VERDICTS
from ..listing import SORTS, NeuronFilter, Pager, sort_neurons
from .picker import version_picker

if TYPE_CHECKING:
    from ..links import Links
    from ..views import Views

NEURONS_PER_PAGE = 50
COMPARISONS_PER_PAGE = 20
VERSIONS_PER_PAGE = 20
SHOWN_STATS = ("spearman", "topk_jaccard", "wasserstein_norm")


def model_page(views: "Views", links: "Links", model: str, sort: str | None, filt: NeuronFilter,
               page: Any = 1, comparisons_page: Any = 1, versions_page: Any = 1) -> tuple[str, dict]:
    """(template, context) of one model's page. Raises NotFound for an unknown model."""
    store = views.store
    m = views.require_model(model)
    sort = sort if sort in SORTS else "severity"
    live = not links.static_mode
    all_rows = store.neuron_verdicts(model)
    counts = {k: 0 for k in VERDICTS}
    for r in all_rows:
        v = str(r.get("verdict") or "").upper()
        if v in counts:
            counts[v] += 1
    rows = sort_neurons(filt.apply(all_rows), sort)
    sort_param = None if sort == "severity" else sort
    pager = Pager.of(len(rows), page, NEURONS_PER_PAGE if live else None)
    if live:
        pager.link(lambda n: links.model(model, sort_param, page=n, **filt.params()))
    thumbs = store.latest_thumbnails(model)
    alerts = store.open_alert_keys(model)
    neurons = []
    for r in pager.slice(rows):
        nid = str(r.get("neuron_id"))
        t = thumbs.get(nid)
        thumb = {**views.viz_item(t, links), "version": t["version"]} if t else None
        neurons.append({**r, "neuron_id": nid, "thumb": thumb if thumb and thumb["image"] else None,
                        "thumb_missing": bool(thumb and thumb["missing"]),
                        "cells": views.stat_cells(r.get("statistics")),
                        "alert": (nid, str(r.get("baseline")), str(r.get("candidate"))) in alerts})

    comps = store.comparisons(model)
    comp_pager = Pager.of(len(comps), comparisons_page, COMPARISONS_PER_PAGE if live else None)
    versions = store.list_versions(model)
    newest_first = list(reversed(versions))
    ver_pager = Pager.of(len(versions), versions_page, VERSIONS_PER_PAGE if live else None)
    if live:
        keep = {"sort": sort_param, **filt.params()}
        comp_pager.link(lambda n: links.model(model, page=pager.page, comparisons_page=n, **keep))
        ver_pager.link(lambda n: links.model(model, page=pager.page, versions_page=n, **keep))
    mlflow = store.mlflow_runs_by_version(model)
    version_rows = [{**v, "mlflow": views.mlflow_link(mlflow.get(v["version"]))} for v in ver_pager.slice(newest_first)]
    ctx = views.common(links)
    ctx.update(page_title=f"{model}", model=m, model_name=model, versions=version_rows, n_versions=len(versions),
               neurons=neurons, n_neurons=len(all_rows), n_shown=len(rows), pager=pager, nfilter=filt,
               choices=NeuronFilter.choices(all_rows), comparisons=comp_pager.slice(comps), comparisons_pager=comp_pager,
               versions_pager=ver_pager, sort=sort, sort_param=sort_param, sorts=SORTS, counts=counts,
               picker=version_picker(versions, m.get("champion"), comps[0] if comps else None),
               stat_specs=[s for s in views.specs if s.key in SHOWN_STATS])
    return "model.html", ctx
