"""The view layer shared by the live app (`app.py`) and the static export (`export.py`).

`Views` holds what every page needs (the store, the thresholds' bands, the MLflow and Prefect UI
base URLs, the Jinja2 environment) and turns a page request into (template name, context); the
pages themselves live in `dashboards/pages/` (overview, model, neuron, compare), one module each.
A `Links` object (dashboards/links.py) decides what URLs look like, so the server and the export
render the very same templates.

The store is an `AuditStore`; the pages use only its read queries (storage/queries.py), and each
page sends a fixed number of them however long the history is.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable

from audit.config import ThresholdsConfig
from storage.links import mlflow_run_url, prefect_flow_run_url

from . import svg
from .errors import BadRequest, NotFound
from .formatting import VERDICTS, fmt_num, fmt_time, jinja_env
from .links import Links, StaticLinks, slug
from .listing import SORTS, NeuronFilter, sort_neurons
from .pages.compare import compare_page
from .pages.model import model_page
from .pages.neuron import neuron_page
from .pages.overview import overview_page
from .sanitize import link_url, mask_url, safe_artifact, store_label

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["Views", "NotFound", "BadRequest", "Links", "StaticLinks", "STATIC_DIR", "SORTS", "VERDICTS",
           "NeuronFilter", "mask_url", "link_url", "safe_artifact", "slug", "sort_neurons"]


class Views:
    """Page contexts over one store. `thresholds`: an `audit.config.ThresholdsConfig` for the bands
    (defaults when None); `mlflow_ui_url` / `prefect_ui_url`: base URLs of those UIs, for run links
    (without them, run ids are shown as text)."""

    def __init__(self, store: Any, artifacts_root: str | Path, mlflow_ui_url: str | None = None,
                 prefect_ui_url: str | None = None, thresholds: Any = None, title: str = "neuron-audit"):
        self.store = store
        self.artifacts_root = Path(artifacts_root)
        self.mlflow_ui_url = link_url(mlflow_ui_url)
        self.prefect_ui_url = link_url(prefect_ui_url)
        self.thresholds = thresholds if thresholds is not None else ThresholdsConfig()
        self.specs = svg.stat_specs(self.thresholds)
        self.spec_by_key = {s.key: s for s in self.specs}
        self.title = title
        self.env = jinja_env()

    # ----------------------------------------------------------------- helpers the pages share
    def run_link(self, system: str, run_id: Any, label: str | None = None, experiment_id: Any = None) -> dict | None:
        """dict(system, id, label, url) of an MLflow run ("mlflow", in `experiment_id` when known) or a Prefect
        flow run ("prefect"); url None when that UI is not configured (the page then shows the id as text).
        None when there is no id."""
        if not run_id:
            return None
        url = (mlflow_run_url(self.mlflow_ui_url, experiment_id, str(run_id)) if system == "mlflow"
               else prefect_flow_run_url(self.prefect_ui_url, str(run_id)))
        return {"system": system, "id": str(run_id), "label": label or str(run_id)[:8], "url": url}

    def mlflow_link(self, run: dict | None, label: str | None = None) -> dict | None:
        """`run_link` of an MLflow run given as dict(run_id, experiment_id) (the store's form), or None."""
        return self.run_link("mlflow", run.get("run_id"), label, run.get("experiment_id")) if run else None

    def stat_cells(self, statistics: dict | None) -> list[dict]:
        """One cell per drift statistic: value, text, threshold band (ok/warn/fail) and help."""
        st = statistics or {}
        out = []
        for spec in self.specs:
            v = st.get(spec.key)
            out.append({"key": spec.key, "label": spec.label, "short": spec.short or spec.label, "value": v,
                        "text": fmt_num(v), "band": svg.band_of(spec, v) or "", "help": spec.help})
        return out

    def viz_item(self, viz: dict, links: Links) -> dict:
        """A stored visualization as the templates show it: method, seed, image and mask (or None when the
        file is not in the artifact root: `missing` then says the file is gone)."""
        img = links.artifact(viz.get("image_path"))
        mask = links.artifact(viz.get("mask_path"))
        return {"method": viz.get("method") or "?", "seed": viz.get("seed"), "image": img, "mask": mask,
                "missing": viz.get("image_path") is not None and img is None,
                "mlflow_artifact_uri": mask_url(viz.get("mlflow_artifact_uri"))}

    def common(self, links: Links) -> dict:
        """The context every page has (base.html): links, title, the store's label, UI links, time."""
        db = getattr(self.store, "database_url", None) or getattr(self.store, "url", None)
        return {
            "links": links,
            "static_mode": links.static_mode,
            "app_title": self.title,
            "store_label": store_label(db),
            "mlflow_ui_url": self.mlflow_ui_url,
            "prefect_ui_url": self.prefect_ui_url,
            "generated_at": fmt_time(_dt.datetime.now(_dt.timezone.utc)),
            "svg": svg,
        }

    _common = common   # the name other page modules (e.g. watch views) used before the split

    def render(self, template: str, ctx: dict) -> str:
        return self.env.get_template(template).render(**ctx)

    def require_model(self, model: str) -> dict:
        """The store's entry of `model` (list_models keys), or NotFound."""
        m = self.store.model_info(model)
        if m is None:
            raise NotFound(f"no model named {model!r} in the store")
        return m

    _require_model = require_model

    def model_names(self) -> list[str]:
        """The names of the store's models."""
        return [str(m.get("name")) for m in self.store.list_models()]

    # ----------------------------------------------------------------- pages
    def overview(self, links: Links, alerts_page: Any = 1) -> tuple[str, dict]:
        return overview_page(self, links, alerts_page)

    def model(self, links: Links, model: str, sort: str | None = None, filt: NeuronFilter | None = None,
              page: Any = 1, comparisons_page: Any = 1, versions_page: Any = 1) -> tuple[str, dict]:
        return model_page(self, links, model, sort, filt or NeuronFilter(), page, comparisons_page, versions_page)

    def neuron(self, links: Links, model: str, neuron_id: str) -> tuple[str, dict]:
        return neuron_page(self, links, model, neuron_id)

    def compare(self, links: Links, model: str, baseline: str, candidate: str, filt: NeuronFilter | None = None,
                page: Any = 1) -> tuple[str, dict]:
        return compare_page(self, links, model, baseline, candidate, filt or NeuronFilter(), page)

    def not_found(self, links: Links, message: str) -> tuple[str, dict]:
        ctx = self.common(links)
        ctx.update(page_title="Not found", message=message)
        return "404.html", ctx

    # ----------------------------------------------------------------- enumeration for the export
    def all_pages(self) -> Iterable[tuple[str, tuple]]:
        """("overview"|"model"|"neuron"|"compare", args) for every page of the store: each model, each of its
        active neurons, each stored comparison."""
        yield "overview", ()
        for m in self.store.list_models():
            name = str(m.get("name"))
            yield "model", (name,)
            for n in self.store.list_neurons(name):
                yield "neuron", (name, str(n["neuron_id"]))
            for c in self.store.comparisons(name):
                yield "compare", (name, str(c.get("baseline")), str(c.get("candidate")))
