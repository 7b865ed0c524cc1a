"""Watched production batches in the store (storage/batches.py, migration 0004_watch), on SQLite
and PostgreSQL: the migration, idempotent saves, alerts once per FAIL, the reference of earlier
batches."""
from __future__ import annotations

import numpy as np
from sqlalchemy import inspect

from storage import migrate
from storage.db import make_engine

WATCH_TABLES = {"watch_batches", "watch_results", "watch_alerts"}


def _tables(url):
    eng = make_engine(url)
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_watch_migration_up_down(db_url):
    migrate.upgrade(db_url)
    assert WATCH_TABLES <= _tables(db_url)
    migrate.downgrade(db_url, "0001")
    assert not WATCH_TABLES & _tables(db_url) and "drift_results" in _tables(db_url)
    migrate.upgrade(db_url)
    assert WATCH_TABLES <= _tables(db_url)


def _save(store, batch_id, verdict="PASS", neurons=("cat", "b5-c17"), n=20, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(neurons))) + shift
    results = [{"neuron_id": nid, "verdict": verdict, "reason": f"{nid} {verdict}",
                "statistics": {"shift": float(shift), "shift_ci": [shift - 0.3, shift + 0.3], "p_value": 0.5},
                "evidence": {"images": [{"index": 0, "name": "img0", "value": 1.0}]}} for nid in neurons]
    return store.batches.save_batch(
        "m", "1", batch_id, source="/data/" + batch_id, images_sha256=f"{seed:064x}", n_images=n,
        skipped={"/data/x.txt": "unreadable"}, reference={"kind": "probe", "sha256": "r" * 64}, verdict=verdict,
        joint={"verdict": verdict, "ratio": 1.0}, summary={"text": "s", "power": {"shift_fail": 0.5}},
        neuron_ids=list(neurons), image_names=[f"img{i}" for i in range(n)], values=values, results=results)


def test_save_batch_is_idempotent_and_updates_in_place(store):
    pk = _save(store, "2026-12-01")
    counts = store.counts()
    assert (counts["watch_batches"], counts["watch_results"]) == (1, 2)
    assert _save(store, "2026-12-01", verdict="FAIL", shift=2.0, seed=1) == pk
    assert store.counts() == counts
    b = store.batches.batch_results("m", "2026-12-01")
    assert b["verdict"] == "FAIL" and {n["verdict"] for n in b["neurons"]} == {"FAIL"}
    assert b["n_skipped"] == 1 and b["images_sha256"] == f"{1:064x}"
    # a re-run with one neuron fewer leaves no stale row behind
    _save(store, "2026-12-01", neurons=("cat",))
    assert store.counts()["watch_results"] == 1
    assert [b["batch_id"] for b in store.batches.list_batches("m")] == ["2026-12-01"]
    assert store.batches.get_batch("m", "nope") is None and store.batches.batch_results("m", "nope") is None


def test_alert_once_per_batch_and_subject(store):
    pk = _save(store, "b1", verdict="FAIL")
    first = store.batches.create_alert_if_new(pk, "cat", "webhook", {"text": "x"})
    assert first is not None
    assert store.batches.create_alert_if_new(pk, "cat", "webhook", {"text": "x"}) is None
    assert store.batches.create_alert_if_new(pk, "(joint)", "webhook", {"text": "y"}) is not None
    store.batches.mark_alert(first, False, "HTTP 503")
    assert {a["subject"] for a in store.batches.undelivered_alerts()} == {"cat", "(joint)"}
    store.batches.mark_alert(first, True)
    assert [a["subject"] for a in store.batches.undelivered_alerts()] == ["(joint)"]
    assert [a["delivery_status"] for a in store.batches.alerts("m", "b1")] == ["sent", "pending"]


def test_reference_of_earlier_pass_batches_and_timeline(store):
    _save(store, "d1", seed=1)
    _save(store, "d2", verdict="FAIL", shift=3.0, seed=2)
    _save(store, "d3", seed=3, neurons=("b5-c17", "cat"))
    values, names, used = store.batches.reference_values("m", "1", ["cat", "b5-c17"], last=5)
    assert used == ["d1", "d3"] and values.shape == (40, 2) and names[0] == "d1/img0"
    d3 = np.random.default_rng(3).normal(size=(20, 2))
    np.testing.assert_allclose(values[20:], d3[:, [1, 0]], rtol=1e-6)          # columns follow the asked order
    assert store.batches.reference_values("m", "1", ["cat"], last=1)[2] == ["d3"]
    assert store.batches.reference_values("m", "2", ["cat"], last=5)[2] == []
    timeline = store.batches.neuron_timeline("m")
    assert [p["batch_id"] for p in timeline["cat"]] == ["d1", "d2", "d3"]
    assert [p["verdict"] for p in timeline["cat"]] == ["PASS", "FAIL", "PASS"]
