"""Links into the MLflow and Prefect UIs (pure string building, for the dashboard, alerts and reports).

`ui_base` is the UI's root URL as a person opens it, e.g. `http://mlflow-host:5000` or `http://127.0.0.1:4200`;
a trailing slash or, for Prefect, a trailing `/api` is tolerated. None or "" gives None (no UI configured).
"""
from __future__ import annotations

from urllib.parse import quote


def _base(ui_base: str | None) -> str | None:
    if not ui_base:
        return None
    base = ui_base.strip().rstrip("/")
    return base or None


def mlflow_experiment_url(ui_base: str | None, experiment_id: str | None) -> str | None:
    base = _base(ui_base)
    if base is None or not experiment_id:
        return None
    return f"{base}/#/experiments/{quote(str(experiment_id))}"


def mlflow_run_url(ui_base: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run (`#/experiments/<id>/runs/<run>`; `#/runs/<run>` when the experiment id is
    unknown, which the UI redirects)."""
    base = _base(ui_base)
    if base is None or not run_id:
        return None
    if experiment_id:
        return f"{base}/#/experiments/{quote(str(experiment_id))}/runs/{quote(str(run_id))}"
    return f"{base}/#/runs/{quote(str(run_id))}"


def prefect_flow_run_url(ui_base: str | None, flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run (`<ui>/runs/flow-run/<id>`)."""
    base = _base(ui_base)
    if base is None or not flow_run_id:
        return None
    if base.endswith("/api"):
        base = base[:-len("/api")]
    return f"{base}/runs/flow-run/{quote(str(flow_run_id))}"
