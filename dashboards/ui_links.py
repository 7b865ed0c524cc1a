"""Which MLflow and Prefect UIs the dashboard and the static report link to.

Precedence: the command-line option (`--mlflow-ui`, `--prefect-ui`), then the config's `ui:` section,
then what the environment already says: for MLflow the tracking URI when it is an http(s) server (its
UI is the same address), for Prefect `PREFECT_UI_URL`, or `PREFECT_API_URL` without its `/api`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

from audit.errors import AuditInputError

_HTTP = re.compile(r"^https?://[^/\s]+")


def ui_urls(cfg: Any, mlflow_ui: str | None = None, prefect_ui: str | None = None,
            environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(MLflow UI base URL, Prefect UI base URL), each None when nothing names one.
    Raises AuditInputError naming the option when a given option is not an http(s) URL."""
    env = os.environ if environ is None else environ
    for option, value in (("--mlflow-ui", mlflow_ui), ("--prefect-ui", prefect_ui)):
        if value is not None and not _HTTP.match(value):
            raise AuditInputError(f"{option}: {value!r} is not an http(s) URL (e.g. http://127.0.0.1:5000)")
    ui = getattr(cfg, "ui", None)
    tracking = str(getattr(getattr(cfg, "store", None), "mlflow_tracking_uri", "") or "")
    mlflow = mlflow_ui or getattr(ui, "mlflow", None) or (tracking if _HTTP.match(tracking) else None)
    prefect = prefect_ui or getattr(ui, "prefect", None) or _prefect_from_env(env)
    return mlflow, prefect


def _prefect_from_env(env: Mapping[str, str]) -> str | None:
    ui = env.get("PREFECT_UI_URL", "")
    if _HTTP.match(ui):
        return ui
    api = env.get("PREFECT_API_URL", "").rstrip("/")
    if _HTTP.match(api):
        return api[: -len("/api")] if api.endswith("/api") else api
    return None
