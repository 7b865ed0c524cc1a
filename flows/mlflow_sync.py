"""The MLflow sync of one audited version, as the flow tasks and the gate call it: by config path, with the
store and tracker this process already opened (flows/runtime.py), so storage/ never opens its own."""
from __future__ import annotations

from typing import Any, Mapping

from . import runtime


def sync_version_audit(cfg_path: str, model: str, version: str, run_id: int | None,
                       neuron_errors: Mapping[str, str] | None = None):
    """Sync (model, version) of the config at `cfg_path` for audit run `run_id` (storage.tracking.
    sync_audited_version); returns its SyncResult. TrackingUnavailableError when MLflow cannot be reached."""
    from storage.tracking import sync_audited_version

    path = str(cfg_path)
    return sync_audited_version(runtime.store(path), runtime.tracker(path), runtime.config(path), model, version,
                                run_id, neuron_errors=neuron_errors)


def log_version_audit(cfg_path: str, model: str, version: str, run_id: int, outcome: Any = None) -> str | None:
    """Sync a freshly audited version; returns its MLflow run id. The outcome's neuron errors become the
    `unaudited_*` tag and metric."""
    errors = getattr(outcome, "neuron_errors", None) if outcome is not None else None
    return sync_version_audit(cfg_path, model, version, run_id, neuron_errors=errors).mlflow_run_id


def log_compare_report(cfg_path: str, model: str, run_id: int, report: dict) -> str | None:
    """After a compare: sync the candidate's run (drift metrics, verdict tags and the stored compare report as
    JSON/HTML artifacts). Returns the candidate's MLflow run id."""
    return sync_version_audit(cfg_path, model, str(report["candidate"]), run_id).mlflow_run_id
