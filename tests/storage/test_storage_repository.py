"""AuditStore on both backends: writes, idempotency, transactions, queries, concurrency, crashes."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from PIL import Image

from _storage_testlib import (NEURONS, PROBE_SHA, STATS_KEY, audit_version, concurrent_worker, crash_worker, make_config,
                              make_drift, make_stats, make_viz, seed_probe)
from storage.artifacts import ArtifactStore
from storage.errors import NotFoundError
from storage.repository import AuditStore


def _full_audit(store: AuditStore) -> dict:
    seed_probe(store)
    run = store.start_run("flow-1", "c" * 64, "0.1.0")
    audit_version(store, "1", run)
    # version 2: same upstream weights for the visualizations -> reuse by content key
    for n in NEURONS:
        st, vals = make_stats(n, shift=0.5)
        found = store.find_visualization("m", n, f"key-{n}")
        assert found is not None and found["version"] == "1"
        store.save_neuron_results("m", "2", n, run_id=run, probe_sha256=PROBE_SHA, stats=st, values=vals,
                                  stats_content_key=STATS_KEY, reused_visualization_ids=[found["id"]])
    ids = {n: store.save_drift("m", "1", "2", PROBE_SHA, make_drift(n, "FAIL" if n == "cat" else "PASS"), run)
           for n in NEURONS}
    alert = store.create_alert_if_new(ids["cat"], "webhook")
    report = store.save_report("m", "1", "2", {"model": "m", "neurons": [], "summary": {"PASS": 3, "WARN": 0, "FAIL": 1}})
    store.finish_run(run, "completed")
    return {"run": run, "drift": ids, "alert": alert, "report": report}


def test_full_audit_and_read_queries(store):
    out = _full_audit(store)
    assert out["alert"] is not None and out["report"].is_file()

    assert store.list_models() == [{"name": "m", "architecture": "efficientnet_lite0", "champion": "1",
                                    "n_versions": 2, "n_neurons": 4}]
    assert [v["version"] for v in store.list_versions("m")] == ["1", "2"]
    runs = store.recent_runs()
    assert runs[0]["status"] == "completed" and runs[0]["duration_s"] >= 0 and runs[0]["mlflow_run_ids"] == []
    assert store.verdict_counts() == store.verdict_counts("m") == {"PASS": 3, "WARN": 0, "FAIL": 1}
    latest = store.latest_verdicts("m")
    assert [r["neuron_id"] for r in latest] == sorted(NEURONS)
    cat = next(r for r in latest if r["neuron_id"] == "cat")
    assert cat["verdict"] == "FAIL" and cat["baseline"] == "1" and cat["candidate"] == "2"
    assert cat["statistics"]["wasserstein_norm"] is None          # NaN stored as null (valid JSON on PostgreSQL)
    assert {"kind", "layer", "index", "label", "reason", "matched_index", "created_at"} <= set(cat)
    comps = store.comparisons("m")
    assert comps == [{"baseline": "1", "candidate": "2", "counts": {"PASS": 3, "WARN": 0, "FAIL": 1},
                      "created_at": comps[0]["created_at"]}]
    assert store.comparison("m", "1", "2") == latest
    alerts = store.open_alerts()
    assert [(a["neuron_id"], a["delivery_status"]) for a in alerts] == [("cat", "pending")]

    hist = store.neuron_history("m", "cat")
    assert hist["neuron"]["kind"] == "class" and hist["neuron"]["label"] == "CAT"
    assert [v["version"] for v in hist["versions"]] == ["1", "2"]
    v1, v2 = hist["versions"]
    assert v1["visualizations"][0]["image_path"] == v2["visualizations"][0]["image_path"]   # reused
    assert v2["visualizations"][0]["reused"] is True
    img = store.artifact_path(v1["visualizations"][0]["image_path"])
    assert Image.open(img).mode == "RGB"
    assert Image.open(store.artifact_path(v1["visualizations"][0]["mask_path"])).mode == "L"
    assert v2["stats"]["mean"] == pytest.approx(make_stats("cat", 0.5)[0].mean)
    assert v1["topk"][0]["name"].startswith("img") and len(v1["topk"]) == 5
    assert sum(v1["hist"]["counts"]) == 24 and len(v1["hist"]["edges"]) == 9
    assert hist["drift"][0]["verdict"] == "FAIL"
    assert store.neuron_history("m", "nope") is None

    st, vals = store.load_stats("m", "2", "cat", PROBE_SHA, STATS_KEY)
    exp_st, exp_vals = make_stats("cat", 0.5)
    assert st == exp_st and np.array_equal(vals["max"], exp_vals["max"])
    assert store.load_stats("m", "2", "cat", "e" * 64, STATS_KEY) is None
    viz = store.load_visualization(v1["visualizations"][0]["id"])
    assert np.array_equal(viz.image, make_viz("cat").image) and np.abs(viz.mask - make_viz("cat").mask).max() < 1 / 255


def test_resave_is_idempotent(store):
    _full_audit(store)
    before = store.counts()
    files = sorted(p for p in store.artifacts.root.rglob("*") if p.is_file())
    # the same audit again (a new run) and the same writes through every entry point
    out = _full_audit(store)
    store.sync_registry(make_config())
    store.save_visualization("m", "1", "cat", "key-cat", make_viz("cat"), out["run"])
    store.link_visualization("m", "2", "cat", store.find_visualization("m", "cat", "key-cat")["id"])
    st, vals = make_stats("cat")
    store.save_stats("m", "1", "cat", PROBE_SHA, st, vals, content_key=STATS_KEY)
    assert out["alert"] is None                       # an open alert already exists for cat 1->2
    after = store.counts()
    assert after.pop("audit_runs") == before.pop("audit_runs")   # same flow_run_id reuses its run row
    assert after == before
    assert sorted(p for p in store.artifacts.root.rglob("*") if p.is_file()) == files


def test_alerts_dedupe_resolve_and_delivery(store):
    seed_probe(store)
    did = store.save_drift("m", "1", "2", PROBE_SHA, make_drift("cat", "FAIL"))
    a = store.create_alert_if_new(did, "webhook")
    assert store.create_alert_if_new(did, "webhook") is None
    assert store.create_alert_if_new(did, "email") is not None        # another channel
    store.mark_alert(a, delivered=False, error="HTTP 500")
    store.mark_alert(a, delivered=True)
    al = store.alert_payload(a)
    assert al["delivery_status"] == "sent" and al["attempts"] == 2 and al["sent_at"] and al["last_error"] is None
    # the neuron recovers: its open alerts are resolved; a later FAIL opens a new one
    store.save_drift("m", "1", "2", PROBE_SHA, make_drift("cat", "PASS"))
    assert store.open_alerts() == []
    store.save_drift("m", "1", "2", PROBE_SHA, make_drift("cat", "FAIL"))
    assert store.create_alert_if_new(did, "webhook") == a          # reopened, not duplicated
    assert [(o["id"], o["delivery_status"]) for o in store.open_alerts()] == [(a, "pending")]
    assert store.create_alert_if_new(did, "webhook") is None
    assert store.counts()["alerts"] == 2
    [u] = store.undelivered_alerts("webhook")
    assert u["id"] == a and u["payload"]["neuron"]["id"] == "cat" and "FAIL" in u["payload"]["text"]
    store.mark_alert(a, delivered=True)
    assert store.undelivered_alerts("webhook") == []


def test_unknown_names_raise_not_found(store):
    seed_probe(store)
    with pytest.raises(NotFoundError, match="neuron 'ghost'"):
        store.save_stats("m", "1", "ghost", PROBE_SHA, make_stats("ghost")[0], {}, content_key=STATS_KEY)
    with pytest.raises(NotFoundError, match="version '9'"):
        store.save_drift("m", "1", "9", PROBE_SHA, make_drift("cat"))


def test_failed_neuron_transaction_leaves_nothing(store):
    seed_probe(store)
    run = store.start_run(None, "c" * 64, "0.1.0")
    audit_version(store, "1", run, neurons=NEURONS[:2])
    st, vals = make_stats(NEURONS[2])
    bad = make_viz(NEURONS[2])
    bad.settings = {"not json": object()}
    with pytest.raises(Exception):
        store.save_neuron_results("m", "1", NEURONS[2], run_id=run, probe_sha256=PROBE_SHA, stats=st, values=vals,
                                  visualizations=[("k", bad)])
    c = store.counts()
    assert c["activation_stats"] == 2 and c["visualizations"] == 2
    store.finish_run(run, "failed", "boom")
    assert store.recent_runs()[0]["status"] == "failed" and store.recent_runs()[0]["error"] == "boom"


def test_crash_mid_audit_keeps_finished_neurons(store, db_url):
    seed_probe(store)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=crash_worker, args=(db_url, str(store.artifacts.root)))
    p.start()
    p.join(120)
    assert p.exitcode == 17
    c = store.counts()
    assert c["activation_stats"] == 2 and c["visualizations"] == 2
    assert store.load_stats("m", "1", NEURONS[2], PROBE_SHA, STATS_KEY) is None
    assert store.recent_runs()[0]["status"] == "running"
    # the store is usable after the crash: the next run completes the audit
    run = store.start_run("next", "c" * 64, "0.1.0")
    audit_version(store, "1", run)
    assert store.counts()["activation_stats"] == 4


def test_two_processes_write_at_once(store, db_url):
    seed_probe(store)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=concurrent_worker, args=(db_url, str(store.artifacts.root), w, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    c = store.counts()
    assert c["models"] == 1 and c["model_versions"] == 2 and c["neurons"] == len(NEURONS) and c["probe_sets"] == 1
    assert c["audit_runs"] == 2
    assert c["activation_stats"] == 2 * len(NEURONS)            # one per (neuron, version, probe set)
    assert c["visualizations"] == len(NEURONS)                  # one per (neuron, content key)
    assert c["version_visualizations"] == 2 * len(NEURONS)
    assert c["drift_results"] == len(NEURONS) and c["alerts"] == 1
    for n in NEURONS:
        for v, shift in (("1", 0.0), ("2", 0.5)):
            st, vals = store.load_stats("m", v, n, PROBE_SHA, STATS_KEY)
            assert st == make_stats(n, shift)[0] and np.array_equal(vals["max"], make_stats(n, shift)[1]["max"])
    if db_url.startswith("sqlite"):
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_artifact_store(tmp_path):
    a = ArtifactStore(tmp_path / "art")
    img = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    rel = a.put_image(img)
    assert rel == a.put_image(img) and rel.startswith("images/") and rel.endswith(".png")
    assert np.array_equal(a.get_image(rel), img)
    mrel = a.put_mask(np.full((4, 4), 0.5, np.float32))
    assert Image.open(a.path(mrel)).mode == "L" and abs(a.get_mask(mrel)[0, 0] - 0.5) < 1 / 255
    arel = a.put_arrays({"x": np.arange(5)})
    assert arel == a.put_arrays({"x": np.arange(5)}) and list(a.get_arrays(arel)["x"]) == [0, 1, 2, 3, 4]
    jrel = a.put_json({"a": float("nan"), "b": np.float32(1.5)})
    assert a.get_json(jrel) == {"a": None, "b": 1.5}
    for bad in ("../x", "images/../../x", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            a.path(bad)


def test_threads_share_one_store(store):
    """Prefect/Dask run tasks in threads: one AuditStore serves them all."""
    from concurrent.futures import ThreadPoolExecutor

    seed_probe(store)
    run = store.start_run(None, "c" * 64, "0.1.0")
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda n: audit_version(store, "1", run, neurons=[n]), NEURONS * 2))
    assert store.counts()["activation_stats"] == len(NEURONS)
