"""The overview page: every model with its latest verdict counts and newest versions, the open alerts
(a page at a time), and the latest audit runs with their Prefect and MLflow links.

Eight queries whatever the history: models, newest versions per model, verdict counts per model,
latest comparison per model, open-alert count, one page of alerts, latest runs (two).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..formatting import VERDICTS
from ..listing import Pager

if TYPE_CHECKING:
    from ..links import Links
    from ..views import Views

ALERTS_PER_PAGE = 25
STATIC_ALERTS = 100          # the static report lists this many alerts; each model page flags the rest
RECENT_VERSIONS = 6          # version chips per model
RUNS = 20
MLFLOW_LINKS_PER_RUN = 4


def overview_page(views: "Views", links: "Links", alerts_page: Any = 1) -> tuple[str, dict]:
    """(template, context) of the overview; `alerts_page` selects the page of open alerts (live server)."""
    store = views.store
    ctx = views.common(links)
    models = store.list_models()
    runs = [_run_row(views, r) for r in store.recent_runs(limit=RUNS)]
    if not models:
        ctx.update(page_title="No audits yet", runs=runs)
        return "empty.html", ctx
    counts_by_model = store.verdict_counts_by_model()
    latest = store.latest_comparisons()
    recent = store.recent_versions(RECENT_VERSIONS)
    rows, total = [], {k: 0 for k in VERDICTS}
    for m in models:
        name = str(m.get("name"))
        counts = counts_by_model.get(name) or {k: 0 for k in VERDICTS}
        for k in VERDICTS:
            total[k] += counts.get(k, 0)
        shown = recent.get(name, [])
        rows.append({**m, "name": name, "versions": shown, "older_versions": max(0, m["n_versions"] - len(shown)),
                     "counts": counts, "latest_comparison": latest.get(name)})

    n_alerts = store.count_open_alerts()
    pager = Pager.of(n_alerts, alerts_page, STATIC_ALERTS if links.static_mode else ALERTS_PER_PAGE)
    if not links.static_mode:
        pager.link(lambda n: links.home(alerts_page=n))
    names = {r["name"] for r in rows}
    alerts = [{**a, "known_model": str(a.get("model")) in names}
              for a in store.open_alerts(limit=pager.per_page, offset=pager.offset)]
    ctx.update(page_title="Overview", models=rows, runs=runs, alerts=alerts, alerts_total=n_alerts,
               alerts_pager=pager, counts=total)
    return "overview.html", ctx


def _run_row(views: "Views", r: dict) -> dict:
    """A run with its Prefect flow-run link and its first few MLflow run links (one per audited version)."""
    mlflow = [views.mlflow_link(m, f"{m['model']} v{m['version']}") for m in r.get("mlflow_runs") or []]
    return {**r, "prefect": views.run_link("prefect", r.get("flow_run_id")),
            "mlflow_links": mlflow[:MLFLOW_LINKS_PER_RUN], "mlflow_more": max(0, len(mlflow) - MLFLOW_LINKS_PER_RUN)}
