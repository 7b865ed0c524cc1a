"""MLflow tracking (local sqlite store and a real `mlflow server`), pending results, `models:/` resolution."""
from __future__ import annotations

import socket

import pytest

from _storage_testlib import NEURONS, PROBE_SHA, audit_version, make_config, make_drift, seed_probe
from storage.errors import TrackingUnavailableError
from storage.repository import AuditStore

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One local sqlite tracking store for the module (its first initialisation takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def audited(tmp_path):
    """A SQLite store with one finished audit of versions 1 and 2 (stats, visualizations, drift)."""
    st = AuditStore(f"sqlite:///{tmp_path}/audit.db", tmp_path / "artifacts")
    st.upgrade()
    st.sync_registry(make_config())
    st.upsert_model_version("m", "1", "builtin:efficientnet_lite0", "a" * 64)
    st.upsert_model_version("m", "2", "models:/tiny/2", "b" * 64)
    seed_probe(st)
    run = st.start_run("flow-x", "c" * 64, "0.1.0")
    audit_version(st, "1", run)
    audit_version(st, "2", run)
    for n in NEURONS:
        st.save_drift("m", "1", "2", PROBE_SHA, make_drift(n, "FAIL" if n == "cat" else "PASS"), run)
    st.finish_run(run, "completed")
    yield st, run
    st.close()


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _check_logged(tracker, store, run, mlflow_run_id):
    r = tracker.client.get_run(mlflow_run_id)
    assert r.info.status == "FINISHED"
    assert r.data.metrics["cat.mean"] == pytest.approx(store.load_stats("m", "2", "cat", PROBE_SHA)[0].mean)
    assert r.data.metrics["cat.vs1.verdict"] == 2.0 and r.data.metrics["cat.vs1.spearman"] == pytest.approx(0.2)
    assert r.data.params["models.m.architecture"] == "efficientnet_lite0"
    assert r.data.tags["neuron_audit.audit_run_id"] == str(run)
    assert r.data.tags["neuron_audit.registered_model"] == "tiny" and r.data.tags["neuron_audit.registered_version"] == "2"
    arts = {a.path for a in tracker.client.list_artifacts(mlflow_run_id, "visualizations")}
    assert "visualizations/cat__vital_seed0.png" in arts and "visualizations/cat__vital_seed0__mask.png" in arts
    assert "compare_report.json" in {a.path for a in tracker.client.list_artifacts(mlflow_run_id)}
    exp = tracker.client.get_experiment(r.info.experiment_id)
    assert exp.name == "neuron-audit/m"
    assert store.recent_runs()[0]["mlflow_run_ids"] == [mlflow_run_id]
    uri = store.neuron_history("m", "cat")["versions"][1]["visualizations"][0]["mlflow_artifact_uri"]
    assert uri.endswith("/visualizations/cat__vital_seed0.png")


def test_log_to_local_sqlite_store(audited, tracking_uri):
    from storage.tracking import MlflowTracker

    store, run = audited
    tracker = MlflowTracker(tracking_uri)
    report = {"model": "m", "baseline": "1", "candidate": "2", "summary": {"PASS": 3, "WARN": 0, "FAIL": 1}}
    rid = tracker.log_version(store, run, "m", "2", params=make_config().model_dump(mode="json"), report=report)
    _check_logged(tracker, store, run, rid)
    # logging the same (audit run, version) again neither duplicates the MLflow run nor the DB row
    assert tracker.log_version(store, run, "m", "2") == rid
    assert store.counts()["mlflow_runs"] == 1 and store.pending_mlflow() == []
    tracker.log_report(rid, {"extra": True}, "another_report.json")


def test_unreachable_mlflow_keeps_results_pending_then_logs_them(audited, tracking_uri):
    from storage.tracking import MlflowTracker

    store, run = audited
    down = MlflowTracker(closed_port_uri(), retries=1, backoff_s=0.01)
    with pytest.raises(TrackingUnavailableError, match="unavailable.*after 2 attempts"):
        down.log_version(store, run, "m", "2", params=make_config().model_dump(mode="json"),
                         report={"model": "m", "summary": {}})
    pending = store.pending_mlflow()
    assert [(p["model"], p["version"], p["attempts"]) for p in pending] == [("m", "2", 1)]
    assert store.load_stats("m", "2", "cat", PROBE_SHA) is not None        # results stay in the database
    # the next run, with MLflow back, logs the pending one from the database
    up = MlflowTracker(tracking_uri)
    [rid] = up.log_pending(store)
    assert store.pending_mlflow() == []
    _check_logged(up, store, run, rid)


def test_resolve_registry_round_trip(tracking_uri, tmp_path):
    from audit.errors import AuditInputError
    from storage.resolve import register_state_dict, resolve_registry_source

    sd = {"conv.weight": torch.arange(12.0).reshape(2, 2, 3), "conv.bias": torch.ones(2)}
    v1 = register_state_dict(tracking_uri, "tiny-rt", sd, alias="champion")
    v2 = register_state_dict(tracking_uri, "tiny-rt", {k: v * 0 for k, v in sd.items()})
    assert (v1, v2) == ("1", "2")
    from storage.resolve import list_registry_versions

    assert list_registry_versions("tiny-rt", tracking_uri) == ["1", "2"]
    for uri, expected in (("models:/tiny-rt/1", sd), ("models:/tiny-rt@champion", sd), ("models:/tiny-rt/2", None)):
        state, info = resolve_registry_source(uri, tracking_uri)
        assert set(state) == set(sd) and info["file"] == "model.safetensors"
        if expected is not None:
            assert all(torch.equal(state[k], sd[k]) for k in sd) and info["version"] == "1"
        else:
            assert info["version"] == "2" and float(state["conv.weight"].abs().sum()) == 0.0
    with pytest.raises(AuditInputError, match="no such registered model version"):
        resolve_registry_source("models:/tiny-rt/7", tracking_uri)
    with pytest.raises(AuditInputError, match="not a registry source"):
        resolve_registry_source("models:/tiny-rt", tracking_uri)


def test_against_real_mlflow_server(mlflow_server, audited):
    from storage.resolve import register_state_dict, resolve_registry_source
    from storage.tracking import MlflowTracker

    store, run = audited
    tracker = MlflowTracker(mlflow_server)
    rid = tracker.log_version(store, run, "m", "2", params=make_config().model_dump(mode="json"),
                              report={"model": "m", "summary": {"PASS": 3, "WARN": 0, "FAIL": 1}})
    _check_logged(tracker, store, run, rid)
    sd = {"w": torch.randn(3, 4)}
    assert register_state_dict(mlflow_server, "tiny-srv", sd, alias="champion") == "1"
    state, info = resolve_registry_source("models:/tiny-srv@champion", mlflow_server)
    assert torch.equal(state["w"], sd["w"]) and info["version"] == "1"


def test_flow_glue_log_version_audit_and_compare_report(tmp_path, tracking_uri):
    """The config-path helpers flows/ calls: log_version_audit, log_compare_report, list_registry_versions."""
    import yaml

    from storage.resolve import list_registry_versions
    from storage.tracking import log_compare_report, log_version_audit

    cfg = make_config().model_dump(mode="json")
    cfg["store"] = {"database": f"sqlite:///{tmp_path}/audit.db", "mlflow_tracking_uri": tracking_uri,
                    "artifacts": str(tmp_path / "artifacts")}
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    st = AuditStore(cfg["store"]["database"], cfg["store"]["artifacts"], upgrade=True)
    st.sync_registry(make_config())
    for v in ("1", "2"):
        st.upsert_model_version("m", v, "builtin:efficientnet_lite0", v * 64)
    seed_probe(st)
    run = st.start_run(None, "c" * 64, "0.1.0")
    audit_version(st, "1", run)
    audit_version(st, "2", run)
    rid = log_version_audit(str(path), "m", "2", run)
    report = {"model": "m", "baseline": "1", "candidate": "2", "neurons": [], "drift_ids": {"cat": 1}}
    assert log_compare_report(str(path), "m", run, report) == rid
    from storage.tracking import MlflowTracker

    client = MlflowTracker(tracking_uri).client
    assert "compare_1_vs_2.json" in {a.path for a in client.list_artifacts(rid)}
    assert client.get_run(rid).data.params["model.architecture"] == "efficientnet_lite0"
    # a compare whose candidate was not logged in this run logs it now, with the report
    rid1 = log_compare_report(str(path), "m", run, {**report, "baseline": "2", "candidate": "1"})
    assert rid1 != rid and "compare_report.json" in {a.path for a in client.list_artifacts(rid1)}
    assert list_registry_versions("no-such-model", tracking_uri) == []
    st.close()
