"""What an audit leaves in MLflow and in Prefect, read back through their own clients (used by the flow tests)."""
from __future__ import annotations

import re
from pathlib import Path


def mlflow_footprint(cfg) -> dict:
    """Runs per experiment of this store, their statuses, and the artifact bytes under the local MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.store.mlflow_tracking_uri)
    runs = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id], max_results=1000):
            runs[r.info.run_id] = (exp.name, r.data.tags.get("neuron_audit.version"), r.info.status)
    root = Path(cfg.store.mlflow_tracking_uri[len("sqlite:///"):]).parent / "mlartifacts"
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"runs": runs, "artifact_bytes": size}


def prefect_view(flow_run_id: str) -> dict:
    """The flow run's name, state type/message and tags, its task-run names, and the keys of its artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
    return {"name": fr.name, "state": fr.state.type.value, "message": fr.state.message or "", "tags": fr.tags,
            "tasks": sorted(t.name for t in tasks), "artifact_keys": sorted(a.key for a in arts if a.key)}


def check_prefect_view(view: dict, model: str, store_id: str, fail_neuron: str) -> None:
    """Names say the model, version, batch and date; a FAIL is visible; artifact keys are per store and model."""
    assert re.fullmatch(rf"{re.escape(model)} \d{{4}}-\d{{2}}-\d{{2}}", view["name"]), view["name"]
    assert view["state"] == "COMPLETED" and "drift FAIL" in view["message"] and fail_neuron in view["message"]
    assert "verdict:FAIL" in view["tags"]
    for expected in (f"probe statistics {model} v1", f"probe statistics {model} v2", f"compare {model} 1→2",
                     f"log to MLflow {model} v2"):
        assert expected in view["tasks"], (expected, view["tasks"])
    assert any(t.startswith(f"render {model} v2 neurons 1-") for t in view["tasks"]), view["tasks"]
    assert view["artifact_keys"] and all(k.startswith("neuron-audit-") and k.endswith(store_id)
                                         for k in view["artifact_keys"]), view["artifact_keys"]
