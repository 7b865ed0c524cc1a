"""The nightly flow end to end on real components: the built-in model and a planted
version 2, a real SQLite file, a real MLflow store, Prefect under its test harness."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from progress_wait import HANG_CAP_S
from tests.flows.conftest import write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

TABLES = ["model_versions", "neurons", "probe_sets", "visualizations", "activation_stats", "drift_results", "alerts"]


def row_counts(db_path) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def report_1_to_2(summary: dict) -> dict:
    return next(r for r in summary["reports"] if (r["baseline"], r["candidate"]) == ("1", "2"))


def test_flow_flags_planted_change_and_rerun_is_all_cache_hits(tiny_config):
    from flows.audit_flow import run_audit

    summary = run_audit(str(tiny_config))
    verdicts = {n["id"]: n["verdict"] for n in report_1_to_2(summary)["neurons"]}
    assert verdicts["espresso"] == "FAIL"
    for untouched in ("egyptian-cat", "rocket", "tripod", "b5-c17", "b3-c40"):
        assert verdicts[untouched] == "PASS", (untouched, report_1_to_2(summary))
    v1, v2 = summary["versions"]
    # Head-only change: version 2 re-renders the class neurons (they read the head: espresso through its
    # relevance, the photograph classes through the fast preset's class term) and reuses the inner ones.
    assert sorted({k.split("#")[0] for k in v2["viz_rendered"]}) == ["egyptian-cat", "espresso", "rocket", "tripod"]
    db = tiny_config.parent / "store" / "audit.db"
    before = row_counts(db)
    # MLflow: one run per version; the static report is written under the artifact store, not into the runs.
    # Prefect: names, the FAIL state message and tag, per-store artifact keys.
    from flows import runtime
    from tests.flows.mlflow_prefect_checks import check_prefect_view, mlflow_footprint, prefect_view

    cfg = runtime.config(str(tiny_config))
    index = summary["static_report"]
    assert index.endswith("index.html")
    footprint = mlflow_footprint(cfg)
    assert sorted(v for _, v, _ in footprint["runs"].values()) == ["1", "2"]
    check_prefect_view(prefect_view(summary["flow_run_id"]), "lite0-demo", runtime.store(str(tiny_config)).store_id,
                       "espresso")
    report_mtime = os.stat(index).st_mtime_ns

    again = run_audit(str(tiny_config))
    for out in again["versions"]:
        assert out["stats_computed"] == [] and out["viz_rendered"] == []
    assert row_counts(db) == before
    # an unchanged re-run logs nothing to MLflow and leaves the static report as it was
    assert mlflow_footprint(cfg) == footprint
    assert os.stat(again["static_report"]).st_mtime_ns == report_mtime
    assert {n["id"]: n["verdict"] for n in report_1_to_2(again)["neurons"]} == verdicts


def test_alert_posted_once_per_new_fail_with_retry(tmp_path, planted_checkpoint, webhook):
    from flows.audit_flow import run_audit

    webhook.fail_first = 1  # the first delivery attempt gets a 503 and is retried
    cfg = write_config(tmp_path, planted_checkpoint, webhook=webhook.url, seeds=[0])
    run_audit(str(cfg), with_visuals=False)
    assert len(webhook.received) == 1
    msg = webhook.received[0]
    assert msg["neuron"]["id"] == "espresso" and msg["neuron"]["verdict"] == "FAIL"
    assert "espresso" in msg["text"] and msg["baseline"] == "1" and msg["candidate"] == "2"
    con = sqlite3.connect(tmp_path / "store" / "audit.db")
    rows = con.execute("select delivery_status from alerts").fetchall()
    con.close()
    assert rows == [("sent",)]
    run_audit(str(cfg), with_visuals=False)
    assert len(webhook.received) == 1, "a repeated run must not repeat the alert"


def test_dask_task_runner_gives_same_verdicts(tmp_path, planted_checkpoint):
    from flows.audit_flow import run_audit

    local = run_audit(str(write_config(tmp_path / "local", planted_checkpoint, seeds=[0])), with_visuals=False)
    dask = run_audit(str(write_config(tmp_path / "dask", planted_checkpoint, seeds=[0],
                                      executor={"dask": {"n_workers": 2}})), with_visuals=False)

    def table(s):
        return {n["id"]: (n["verdict"], round(n["statistics"]["spearman"], 6)) for n in report_1_to_2(s)["neurons"]}

    assert table(local) == table(dask)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_creates_scheduled_deployment(tmp_path, tiny_config):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=os.getcwd(), PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.Popen([sys.executable, "-m", "audit", "serve", "-c", str(tiny_config), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def query(path: str, body: dict) -> list:
        req = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    found, scheduled, limits = None, [], []
    try:
        deadline = time.monotonic() + HANG_CAP_S          # ends when the deployment shows or the process exits
        while time.monotonic() < deadline and proc.poll() is None and not scheduled:
            try:
                found = found or [d for d in query("deployments/filter", {}) if d["name"] == "nightly"]
                scheduled = query("flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
                limits = [c for c in query("concurrency_limits/filter", {}) if c["tag"] == "neuron-audit-heavy"]
            except OSError:
                pass
            time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert found, f"neuron-audit serve did not register the nightly deployment (exit code {proc.returncode})"
    schedules = found[0]["schedules"]
    assert schedules[0]["schedule"]["cron"] == "0 2 * * *"
    assert schedules[0]["schedule"]["timezone"] == "UTC"
    assert scheduled and all(r["expected_start_time"].endswith("T02:00:00Z") for r in scheduled)
    assert limits and limits[0]["concurrency_limit"] == 1
