"""The MLflow mirror on a real MLflow store (local sqlite store and a real `mlflow server`): one run per model
version found again by tag, only new content logged, metrics/tags/images/reports as MLflow users expect them,
pending results logged later."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from _storage_testlib import NEURONS, PROBE_SHA, STATS_KEY, audit_version, make_config, make_drift, make_viz, seed_probe
from storage.errors import TrackingUnavailableError
from storage.repository import AuditStore

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One local sqlite tracking store for the module (its first initialisation takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _report(store, baseline: str = "1", candidate: str = "2") -> dict:
    rows = store.mlflow_version_content("m", candidate)["drift"]
    neurons = [{"id": d["neuron_id"], "layer": "classifier", "index": 285, "kind": "class", "verdict": d["verdict"],
                "statistics": d["statistics"], "matched_index": None, "reason": d["reason"]}
               for d in rows if d["baseline"] == baseline]
    summary = {v: sum(n["verdict"] == v for n in neurons) for v in ("PASS", "WARN", "FAIL")}
    return {"model": "m", "baseline": baseline, "candidate": candidate, "probe_set_sha256": PROBE_SHA,
            "created_at": "2026-12-01T00:00:00Z", "neurons": neurons, "summary": summary}


@pytest.fixture
def audited(tmp_path):
    """A SQLite store with one finished audit of versions 1 and 2 (stats, visualizations, drift, report)."""
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
    st.save_report("m", "1", "2", _report(st))
    st.finish_run(run, "completed")
    yield st, run
    st.close()


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _runs_of(tracker, store) -> list:
    exp = tracker.experiment_id("m")
    return tracker.client.search_runs([exp], filter_string=f"tags.`neuron_audit.store` = '{store.store_id}'")


def _artifact_bytes(tracking_uri: str) -> int:
    root = Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _check_logged(tracker, store, run, mlflow_run_id):
    r = tracker.client.get_run(mlflow_run_id)
    assert r.info.status == "FINISHED"
    m, tags = r.data.metrics, r.data.tags
    assert m["cat.mean"] == pytest.approx(store.load_stats("m", "2", "cat", PROBE_SHA, STATS_KEY)[0].mean)
    # drift per neuron and baseline, a headline per neuron, counts to sort and filter by
    assert m["cat.vs1.verdict_code"] == 2.0 and m["cat.vs1.spearman"] == pytest.approx(0.2)
    assert m["cat.verdict_code"] == 2.0 and m["cat.spearman"] == pytest.approx(0.2)
    assert m["espresso.verdict_code"] == 0.0 and "cat.vs1.wasserstein_norm" not in m      # NaN is not logged
    assert (m["fail_count"], m["warn_count"], m["pass_count"]) == (1.0, 0.0, 3.0) and m["vs1.fail_count"] == 1.0
    assert m["neurons_audited"] == len(NEURONS)
    # outcomes are tags, not params; the config is params
    assert tags["neuron_audit.verdict"] == "FAIL" and tags["neuron_audit.failed_neurons"] == "cat"
    assert not any(k.startswith("outcome") for k in r.data.params)
    assert r.data.params["architecture"] == "efficientnet_lite0"
    assert tags["neuron_audit.store"] == store.store_id and tags["neuron_audit.version"] == "2"
    assert tags["neuron_audit.registered_model"] == "tiny" and tags["neuron_audit.registered_version"] == "2"
    assert r.info.run_name == "m v2"
    # images through log_image (MLflow's image view), the compare report as JSON and HTML
    images = [a.path for a in tracker.client.list_artifacts(mlflow_run_id, "images")]
    assert any(p.startswith("images/cat.vital.seed0+step+") and p.endswith(".png") for p in images)
    assert any(p.startswith("images/cat.vital.seed0.mask+step+") for p in images)
    assert {"compare/1_vs_2.json", "compare/1_vs_2.html"} <= {a.path for a in
                                                             tracker.client.list_artifacts(mlflow_run_id, "compare")}
    report = json.loads(Path(tracker.client.download_artifacts(mlflow_run_id, "compare/1_vs_2.json")).read_text())
    assert report["summary"]["FAIL"] == 1 and "created_at" not in report
    exp = tracker.client.get_experiment(r.info.experiment_id)
    assert exp.name == "neuron-audit/m"
    uri = store.neuron_history("m", "cat")["versions"][1]["visualizations"][0]["mlflow_artifact_uri"]
    assert "/images/cat.vital.seed0+step+" in uri


def test_sync_logs_once_and_an_unchanged_resync_touches_nothing(audited, tracking_uri):
    from storage.tracking import MlflowTracker

    store, run = audited
    cfg = make_config().model("m").model_dump(mode="json")
    tracker = MlflowTracker(tracking_uri)
    first = tracker.sync_version(store, "m", "2", run, config=cfg)
    assert first.created and first.logged
    _check_logged(tracker, store, run, first.mlflow_run_id)
    runs, size = len(_runs_of(tracker, store)), _artifact_bytes(tracking_uri)
    assert runs == 1

    # A second audit with nothing new: no MLflow client is even created, nothing is logged.
    run2 = store.start_run("flow-y", "c" * 64, "0.1.0")
    fresh = MlflowTracker(tracking_uri)
    again = fresh.sync_version(store, "m", "2", run2, config=cfg)
    assert again.mlflow_run_id == first.mlflow_run_id and again.logged == [] and fresh._client is None
    assert len(_runs_of(tracker, store)) == runs and _artifact_bytes(tracking_uri) == size

    # Something changes (cat recovers): only what changed is logged, at the new audit's step, into the same run.
    store.save_drift("m", "1", "2", PROBE_SHA, make_drift("cat", "PASS"), run2)
    store.save_report("m", "1", "2", _report(store))
    changed = MlflowTracker(tracking_uri).sync_version(store, "m", "2", run2, config=cfg)
    assert changed.mlflow_run_id == first.mlflow_run_id and not changed.created
    assert "metric:cat.vs1.verdict_code" in changed.logged and "tag:neuron_audit.verdict" in changed.logged
    assert not any(k.startswith(("image:", "param:", "metric:espresso")) for k in changed.logged)
    history = tracker.client.get_metric_history(first.mlflow_run_id, "cat.vs1.verdict_code")
    assert [(h.step, h.value) for h in history] == [(run, 2.0), (run2, 0.0)]
    assert tracker.client.get_run(first.mlflow_run_id).data.tags["neuron_audit.verdict"] == "PASS"
    assert len(_runs_of(tracker, store)) == runs
    images_before = len(tracker.client.list_artifacts(first.mlflow_run_id, "images"))

    # A new visualization of one neuron (same mask bytes): its image is logged as a new step of its key; the
    # identical mask and the other neurons' images are not logged again.
    store.save_neuron_results("m", "2", "cat", run_id=run2, visualizations=[("key-cat-new", make_viz("cat", value=7))])
    viz = MlflowTracker(tracking_uri).sync_version(store, "m", "2", run2, config=cfg)
    assert [k for k in viz.logged if k.startswith("image:")] == ["image:cat.vital.seed0"]
    assert len(tracker.client.list_artifacts(first.mlflow_run_id, "images")) == images_before + 2   # png + thumbnail


def test_deleted_run_is_recreated_and_runs_are_found_again_by_tag(audited, tracking_uri):
    from storage.tracking import MlflowTracker

    store, run = audited
    cfg = make_config().model("m").model_dump(mode="json")
    tracker = MlflowTracker(tracking_uri)
    first = tracker.sync_version(store, "m", "2", run, config=cfg)
    # the ledger is lost (e.g. a re-created database at the same URL): the run is found again by its tags, and
    # a changed config does not try to change the params the run holds (MLflow refuses that)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM mlflow_logged")
    cfg["probe_set"] = "./other-probe-images"
    found = tracker.sync_version(store, "m", "2", run, config=cfg)
    assert found.mlflow_run_id == first.mlflow_run_id and not found.created
    assert tracker.client.get_run(first.mlflow_run_id).data.params["probe_set"] == "builtin:samples"
    assert "artifact:config.json" in found.logged
    # the run was deleted in MLflow: the next sync that has something to log creates a new one with everything
    tracker.client.delete_run(first.mlflow_run_id)
    store.save_drift("m", "1", "2", PROBE_SHA, make_drift("espresso", "WARN"), run)
    again = MlflowTracker(tracking_uri).sync_version(store, "m", "2", run)
    assert again.created and again.mlflow_run_id != first.mlflow_run_id
    assert tracker.client.get_run(again.mlflow_run_id).data.metrics["warn_count"] == 1.0
    assert any(k.startswith("image:") for k in again.logged)


def test_unreachable_mlflow_keeps_results_pending_then_logs_them(audited, tracking_uri, tmp_path):
    import yaml

    from flows import runtime
    from flows.mlflow_sync import sync_version_audit
    from storage.tracking import MlflowTracker

    store, run = audited
    cfg = make_config().model_dump(mode="json")
    cfg["store"] = {"database": store.url, "mlflow_tracking_uri": closed_port_uri(),
                    "artifacts": str(store.artifacts.root)}
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runtime.tracker.cache_clear()
    down = runtime.tracker(str(path))
    down.retries, down.backoff_s = 1, 0.01
    with pytest.raises(TrackingUnavailableError, match="unavailable.*after 2 attempts"):
        sync_version_audit(str(path), "m", "2", run)
    pending = store.pending_mlflow()
    assert [(p["model"], p["version"], p["attempts"]) for p in pending] == [("m", "2", 1)]
    assert store.load_stats("m", "2", "cat", PROBE_SHA, STATS_KEY) is not None        # results stay in the database
    # the next run, with MLflow back, logs the pending one from the database
    up = MlflowTracker(tracking_uri)
    [rid] = up.log_pending(store)
    assert store.pending_mlflow() == [] and store.mlflow_run(run, "m", "2")["mlflow_run_id"] == rid
    assert store.mlflow_run(run, "m", "2")["mlflow_experiment_id"] == up.experiment_id("m")
    _check_tags = up.client.get_run(rid).data.tags
    assert _check_tags["neuron_audit.verdict"] == "FAIL"


def test_registered_model_version_gets_outcome_tags(audited, tracking_uri):
    from sources.mlflow_registry import register_state_dict
    from storage.tracking import MlflowTracker

    store, run = audited
    name = f"tiny-{store.store_id}"
    register_state_dict(tracking_uri, name, {"w": torch.zeros(2)})
    register_state_dict(tracking_uri, name, {"w": torch.ones(2)}, alias="candidate")
    store.upsert_model_version("m", "2", f"models:/{name}@candidate", "b" * 64)
    tracker = MlflowTracker(tracking_uri)
    result = tracker.sync_version(store, "m", "2", run)
    mv = tracker.client.get_model_version(name, "2")
    assert mv.tags["neuron_audit.verdict"] == "FAIL" and mv.tags["neuron_audit.fail_count"] == "1"
    assert mv.tags["neuron_audit.mlflow_run_id"] == result.mlflow_run_id
    assert "neuron_audit.verdict" not in tracker.client.get_model_version(name, "1").tags


def test_registered_version_is_tagged_before_the_runs_items(audited, tracking_uri):
    """The verdict tags are what a release waits on (docs/gate.md, registration-to-verdict): they are written
    before the run's metrics and images, so a run whose image cannot be logged yet leaves the verdict on the
    version, and the next sync logs the rest."""
    from sources.mlflow_registry import register_state_dict
    from storage.tracking import MlflowTracker

    store, run = audited
    name = f"tagfirst-{store.store_id}"
    register_state_dict(tracking_uri, name, {"w": torch.zeros(2)})
    store.upsert_model_version("m", "2", f"models:/{name}/1", "b" * 64)
    tracker = MlflowTracker(tracking_uri)
    desired = tracker.desired_items(store.mlflow_version_content("m", "2"))
    image = Path(next(v[1]["path"] for k, v in sorted(desired.items()) if k.startswith("image:")))
    away = image.with_name(image.name + ".away")
    image.rename(away)
    with pytest.raises(FileNotFoundError):
        tracker.sync_version(store, "m", "2", run)
    assert tracker.client.get_model_version(name, "1").tags["neuron_audit.verdict"] == "FAIL"
    away.rename(image)
    result = tracker.sync_version(store, "m", "2", run)
    assert any(k.startswith("image:") for k in result.logged)
    assert not any(k.startswith("mvtag:") for k in result.logged)          # the tags were written the first time


def test_against_real_mlflow_server(mlflow_server, audited):
    from storage.tracking import MlflowTracker

    store, run = audited
    tracker = MlflowTracker(mlflow_server)
    first = tracker.sync_version(store, "m", "2", run, config=make_config().model("m").model_dump(mode="json"))
    _check_logged(tracker, store, run, first.mlflow_run_id)
    assert MlflowTracker(mlflow_server).sync_version(store, "m", "2", run).logged == []


def test_flow_glue_syncs_candidate_with_its_compare_report(tmp_path, tracking_uri):
    """The config-path helpers flows/ calls (flows/mlflow_sync.py): log_version_audit and log_compare_report."""
    import yaml

    from flows.mlflow_sync import log_compare_report, log_version_audit
    from storage.tracking import MlflowTracker

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
    client = MlflowTracker(tracking_uri).client
    assert "compare" not in {a.path for a in client.list_artifacts(rid)}
    for n in NEURONS:
        st.save_drift("m", "1", "2", PROBE_SHA, make_drift(n, "WARN" if n == "cat" else "PASS"), run)
    report = _report_for(st)
    assert log_compare_report(str(path), "m", run, report) == rid
    assert {"compare/1_vs_2.json", "compare/1_vs_2.html"} <= {a.path for a in client.list_artifacts(rid, "compare")}
    html = Path(client.download_artifacts(rid, "compare/1_vs_2.html")).read_text()
    assert "<table>" in html and "WARN" in html and "cat" in html
    assert client.get_run(rid).data.params["architecture"] == "efficientnet_lite0"
    assert client.get_run(rid).data.tags["neuron_audit.verdict"] == "WARN"
    st.close()


def _report_for(st) -> dict:
    report = _report(st)
    st.save_report("m", "1", "2", report)
    return {**report, "drift_ids": {"cat": 1}}


def test_links():
    from storage.links import mlflow_run_url, prefect_flow_run_url

    assert mlflow_run_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    assert mlflow_run_url("http://h:5000", None, "abc") == "http://h:5000/#/runs/abc"
    assert mlflow_run_url(None, "3", "abc") is None and mlflow_run_url("http://h", "3", None) is None
    assert prefect_flow_run_url("http://127.0.0.1:4200/api", "f-1") == "http://127.0.0.1:4200/runs/flow-run/f-1"
