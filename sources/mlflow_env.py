"""Process settings for every MLflow client neuron-audit creates (telemetry off, short HTTP retries: storage/
retries itself with backoff and marks results pending, so MLflow's own minutes of retrying would only hide an
unreachable server), and where a local MLflow store keeps its artifacts. Defaults only: a user's own
environment wins."""
from __future__ import annotations

import os
from pathlib import Path

MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",   # an int
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_mlflow_env() -> None:
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local `sqlite:///DIR/mlflow.db` store: `file://DIR/mlartifacts` (MLflow's own default is ./mlruns
    in the current directory). None for servers, which choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None
