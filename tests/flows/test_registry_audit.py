"""Versions registered the MLflow 3 way (`mlflow.pytorch.log_model`, pt2) audited through the nightly flow via
`mlflow_registered_model:`: every registered version is found, loaded without unpickling, audited and compared;
the registered versions get the outcome as tags."""
from __future__ import annotations

import pytest
import yaml

from tests.storage._registry_testlib import ARCH, log_registered, tiny_model

pytestmark = pytest.mark.usefixtures("prefect_harness")
PLANTED = 7


def test_registered_versions_are_audited_and_tagged(tmp_path):
    from mlflow.tracking import MlflowClient

    from audit.models import weights_sha256
    from flows import runtime
    from flows.audit_flow import run_audit

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_registered(uri, tmp_path / "training", "reg-e2e", tiny_model(3), alias="champion")
    log_registered(uri, tmp_path / "training", "reg-e2e", tiny_model(3, negate_row=PLANTED))
    cfg = {"store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": uri,
                     "artifacts": "./store/artifacts"},
           "models": [{"name": "reg", "architecture": ARCH, "mlflow_registered_model": "reg-e2e", "champion": "1",
                       "probe": {"crops_per_image": 3, "resolution": 64},
                       "visualization": {"resolution": 32, "steps": 2, "seeds": [0], "n_references": 2},
                       "neurons": [{"id": "planted", "kind": "class", "layer": "classifier", "index": PLANTED,
                                    "references": "top-k"},
                                   {"id": "other", "kind": "class", "layer": "classifier", "index": 3,
                                    "references": "top-k"},
                                   {"id": "inner", "kind": "inner", "layer": "blocks.3", "index": 5}]}]}
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg))

    summary = run_audit(str(path))
    assert [v["version"] for v in summary["versions"]] == ["1", "2"]
    assert all(not v["neuron_errors"] for v in summary["versions"])
    [report] = [r for r in summary["reports"] if (r["baseline"], r["candidate"]) == ("1", "2")]
    verdicts = {n["id"]: n["verdict"] for n in report["neurons"]}
    assert verdicts == {"planted": "FAIL", "other": "PASS", "inner": "PASS"}, report
    store = runtime.store(str(path))
    stored = {v["version"]: v for v in store.list_versions("reg")}
    assert stored["2"]["source"] == "models:/reg-e2e/2"
    assert stored["2"]["weights_sha256"] == weights_sha256(tiny_model(3, negate_row=PLANTED))

    client = MlflowClient(uri)
    mv = client.get_model_version("reg-e2e", "2")
    assert mv.tags["neuron_audit.verdict"] == "FAIL" and mv.tags["neuron_audit.failed_neurons"] == "planted"
    run = client.get_run(mv.tags["neuron_audit.mlflow_run_id"])
    assert run.data.tags["neuron_audit.registered_model"] == "reg-e2e" and run.data.metrics["planted.verdict_code"] == 2
