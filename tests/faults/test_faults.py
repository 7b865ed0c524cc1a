"""Faults leave a consistent store: each case breaks a real audit in a real way (a signal to a real
process, a second process, a read-only file, deleted or truncated files, a failing webhook, a lost
MLflow store), checks what the store holds right after, and checks that a re-run ends exactly where
an uninterrupted audit ends (`reference`: row counts, verdicts, visualization keys, intact files).
Cases that need a whole new audit beyond the shared reference are marked `slow` (make test runs them)."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from progress_wait import HANG_CAP_S
from tests.faults.conftest import (audit_state, cli, cli_process, copy_store, db_counts, mlflow_run_count,
                                   process_env, runs, tiny_config_dict, write_config)

pytestmark = pytest.mark.usefixtures("prefect_api")


def _start_run(cfg: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "audit", "run", "-c", str(cfg)], env=process_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_two_at_once(cfg: Path) -> tuple[subprocess.Popen, subprocess.Popen, str, str, str]:
    """Two `run` processes of one config started together: (a, b, stdout of both, stderr of a, of b)."""
    a, b = _start_run(cfg), _start_run(cfg)
    try:
        (out_a, err_a), (out_b, err_b) = a.communicate(timeout=HANG_CAP_S), b.communicate(timeout=HANG_CAP_S)
    finally:
        _kill(a)
        _kill(b)
    return a, b, out_a + out_b, err_a, err_b


def _wait_for_rows(db: Path, proc: subprocess.Popen, table: str = "activation_stats", n: int = 1,
                   timeout: float = HANG_CAP_S) -> dict:
    """The store's row counts once `table` holds `n` rows; waits while the process is alive (it may still be
    starting on a loaded machine), fails as soon as it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            counts = db_counts(db)
        except sqlite3.OperationalError:
            counts = {}
        if counts.get(table, 0) >= n:
            return counts
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
    pytest.fail(f"the run ended (code {proc.returncode}) or stalled before {n} {table} row(s): {err[-2000:]}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _signal_after_first_results(cfg: Path, sig: int, group: bool = False, env: dict | None = None,
                                table: str = "activation_stats") -> tuple[subprocess.Popen, str, float]:
    """Start `run` as a real process, send `sig` (to its process group when `group`) once its first
    row of `table` is stored; returns (process, its stderr, seconds from the signal to its exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "audit", "run", "-c", str(cfg)], env=env or process_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_rows(cfg.parent / "store" / "audit.db", proc, table=table)
        t0 = time.monotonic()
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        return proc, err, time.monotonic() - t0
    finally:
        _kill(proc)


def _visualization_rows(db: Path) -> dict[int, tuple]:
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute("select id, content_key, image_path, audit_run_id from visualizations")}
    finally:
        con.close()


def _dashboard_get(directory: Path, url: str):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{directory}/store/audit.db", directory / "store" / "artifacts", read_only=True)
    try:
        return TestClient(create_app(store, directory / "store" / "artifacts")).get(url)
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_mid_run_is_marked_interrupted_and_the_rerun_equals_an_uninterrupted_run(tmp_path, swapped_checkpoint,
                                                                                        reference):
    """SIGKILL once the first visualization is stored (statistics done, comparison not started): what was
    finished is kept and reused by the re-run (the same rows, not rendered again), the killed run is marked
    interrupted, and the re-run ends exactly where an uninterrupted audit ends. (This case also carries what
    tests/flows' former kill-and-resume test checked, on the smaller fault config.)"""
    cfg = write_config(tmp_path, swapped_checkpoint)
    db = tmp_path / "store" / "audit.db"
    _signal_after_first_results(cfg, signal.SIGKILL, table="visualizations")
    kept = db_counts(db)
    assert kept["activation_stats"] >= 1 and kept["visualizations"] >= 1 and kept["drift_results"] == 0
    [(killed_run, status, _)] = runs(tmp_path)
    assert status == "running"                                        # nobody could mark it yet
    kept_rows = _visualization_rows(db)

    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    statuses = [s for _, s, _ in runs(tmp_path)]
    assert statuses == ["interrupted", "completed"], statuses
    assert audit_state(tmp_path) == reference["state"]
    after = _visualization_rows(db)
    # Reused, not rendered again: each visualization finished before the kill is still the row the killed
    # run wrote, with the same content key and image.
    assert {i: after.get(i) for i in kept_rows} == kept_rows
    assert all(run_id == killed_run for _, _, run_id in kept_rows.values())
    page = _dashboard_get(tmp_path, "/")
    assert page.status_code == 200 and 'status-bad">interrupted' in page.text


@pytest.mark.slow
def test_sigterm_stops_within_seconds_keeps_finished_results_and_the_rerun_completes(tmp_path, swapped_checkpoint,
                                                                                    reference):
    cfg = write_config(tmp_path, swapped_checkpoint)
    db = tmp_path / "store" / "audit.db"
    proc, err, stopped_s = _signal_after_first_results(cfg, signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert stopped_s < 30, stopped_s          # the grace period is 5 s; the bound leaves room for a loaded machine
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    kept = db_counts(db)
    assert kept["activation_stats"] >= 1
    assert [s for _, s, _ in runs(tmp_path)] == ["interrupted"], err[-3000:]
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    assert audit_state(tmp_path) == reference["state"]


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_its_own_prefect_server(tmp_path, swapped_checkpoint, reference):
    """The scheduler signals the whole group (systemd, `kill -TERM -PGID`): the temporary Prefect server
    dies with it, Prefect's own reporting cannot reach it, and the watchdog still ends the run in seconds."""
    cfg = write_config(tmp_path, swapped_checkpoint)
    env = process_env()
    env.pop("PREFECT_API_URL", None)              # its own temporary server, in its process group
    proc, err, stopped_s = _signal_after_first_results(cfg, signal.SIGTERM, group=True, env=env)
    assert proc.returncode == 143, err[-2000:]
    assert stopped_s < 30, stopped_s
    # The run marks itself interrupted when its bounded cleanup gets the write in before the watchdog's exit.
    # One quiet CI run left it 'running' while the cleanups still ran in registration order (the server's
    # stop first); they now run last-registered first, and should the write still miss its 3 s, the next
    # run marks it.
    assert [s for _, s, _ in runs(tmp_path)] in (["interrupted"], ["running"])
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"] and audit_state(tmp_path) == reference["state"]
    assert [s for _, s, _ in runs(tmp_path)] == ["interrupted", "completed"]


@pytest.mark.slow
def test_two_concurrent_runs_on_one_sqlite_store_serialize(tmp_path, swapped_checkpoint, reference):
    cfg = write_config(tmp_path, swapped_checkpoint)
    a, b, out, err_a, err_b = run_two_at_once(cfg)
    assert (a.returncode, b.returncode) == (reference["code"], reference["code"]), (err_a[-1500:], err_b[-1500:])
    assert "waiting:" in err_a + err_b                      # the second one queued behind the first
    assert "unchanged since their last audit" in out   # and then found its work done
    assert [s for _, s, _ in runs(tmp_path)] == ["completed", "completed"]
    assert audit_state(tmp_path) == reference["state"]


def test_read_only_database_is_bad_input_named_before_any_work(tmp_path, reference):
    cfg = copy_store(reference, tmp_path / "audit")
    db = tmp_path / "audit" / "store" / "audit.db"
    before = db_counts(db)
    os.chmod(db, 0o444)
    try:
        # root ignores file modes: drop the override capabilities, as an ordinary user would run it
        wrapper = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
                   if os.geteuid() == 0 and shutil.which("setpriv") else [])
        r = subprocess.run(wrapper + [sys.executable, "-m", "audit", "run", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=300, env=process_env())
    finally:
        os.chmod(db, 0o644)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "store.database" in r.stderr and "read-only" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "async_timeout" not in r.stderr
    assert db_counts(db) == before and len(runs(tmp_path / "audit")) == 1
    r2 = cli("run", "-c", str(cfg))                          # writable again: an unchanged re-run
    assert r2.code == reference["code"] and audit_state(tmp_path / "audit") == reference["state"]


@pytest.mark.slow
def test_deleted_artifacts_show_placeholders_and_are_regenerated(tmp_path, reference):
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    before = db_counts(d / "store" / "audit.db")
    image = sqlite3.connect(d / "store" / "audit.db").execute("select image_path from visualizations").fetchone()[0]
    shutil.rmtree(d / "store" / "artifacts" / "images")
    shutil.rmtree(d / "store" / "artifacts" / "masks", ignore_errors=True)
    page = _dashboard_get(d, f"/artifacts/{image}")
    assert page.status_code == 200 and page.headers.get("X-Artifact-Placeholder")
    assert audit_state(d)["broken_artifacts"]
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    assert db_counts(d / "store" / "audit.db") == before
    assert audit_state(d) == reference["state"]              # every file back and intact
    assert not _dashboard_get(d, f"/artifacts/{image}").headers.get("X-Artifact-Placeholder")


@pytest.mark.slow
def test_truncated_artifacts_are_detected_by_hash_and_regenerated(tmp_path, reference):
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    con = sqlite3.connect(d / "store" / "audit.db")
    image = con.execute("select image_path from visualizations").fetchone()[0]
    values = con.execute("select values_path from activation_stats").fetchone()[0]
    con.close()
    for rel in (image, values):
        p = d / "store" / "artifacts" / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert set(audit_state(d)["broken_artifacts"]) == {image, values}
    page = _dashboard_get(d, f"/artifacts/{image}")
    assert page.status_code == 200 and page.headers.get("X-Artifact-Placeholder")
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    assert audit_state(d) == reference["state"]


def _alerts(d: Path) -> list[tuple]:
    con = sqlite3.connect(d / "store" / "audit.db")
    try:
        return con.execute("select delivery_status, attempts, last_error from alerts order by id").fetchall()
    finally:
        con.close()


def _with_webhook(cfg: Path, url: str, timeout_s: float = 5.0) -> None:
    import yaml

    data = yaml.safe_load(cfg.read_text())
    data["alerts"] = {"webhook": url, "timeout_s": timeout_s}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))


def test_webhook_500_keeps_alerts_open_and_the_next_run_delivers_them_once(tmp_path, reference, webhook):
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    n_fail = sum(1 for v in reference["state"]["verdicts"].values() if v == "FAIL")
    webhook.mode = "500"
    _with_webhook(cfg, webhook.url)
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    assert "undelivered" in r.err
    alerts = _alerts(d)
    assert len(alerts) == n_fail and all(s == "failed" and e == "HTTP 500" for s, _, e in alerts), alerts
    webhook.mode = "ok"
    assert cli("run", "-c", str(cfg)).code == reference["code"]
    assert len(webhook.received) == n_fail and all(s == "sent" for s, _, _ in _alerts(d))
    assert cli("run", "-c", str(cfg)).code == reference["code"]
    assert len(webhook.received) == n_fail, "an alert was delivered twice"
    assert audit_state(d) == reference["state"]


def test_hanging_webhook_costs_one_timeout_per_run_not_one_per_alert(tmp_path, reference, webhook):
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    webhook.mode, webhook.hang_s = "hang", 20.0
    _with_webhook(cfg, webhook.url, timeout_s=1.0)
    t0 = time.monotonic()
    r = cli("run", "-c", str(cfg))
    elapsed = time.monotonic() - t0
    assert r.code == reference["code"], r.err
    alerts = _alerts(d)
    assert alerts and all(s == "failed" for s, _, _ in alerts)
    assert webhook.calls == 3, webhook.calls                  # 3 attempts for the first alert, none for the rest
    assert any("unreachable earlier in this run" in (e or "") for _, _, e in alerts[1:]) or len(alerts) == 1
    assert elapsed < 60, elapsed
    assert audit_state(d) == reference["state"]


@pytest.mark.slow
def test_mlflow_store_deleted_between_runs_is_logged_again(tmp_path, reference):
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    assert mlflow_run_count(d / "store" / "mlflow.db") >= 2
    before = db_counts(d / "store" / "audit.db")
    (d / "store" / "mlflow.db").unlink()
    shutil.rmtree(d / "store" / "mlartifacts", ignore_errors=True)
    r = cli_process("run", "-c", str(cfg))        # a fresh process: MLflow keeps per-process store handles
    assert r.returncode == reference["code"], r.stderr[-2000:]
    assert mlflow_run_count(d / "store" / "mlflow.db") >= 2
    assert db_counts(d / "store" / "audit.db") == before
    assert audit_state(d) == reference["state"]


@pytest.mark.slow
def test_a_neuron_that_fails_at_run_time_gives_exit_3_a_listed_reason_and_an_alert(tmp_path, swapped_checkpoint,
                                                                                  webhook, monkeypatch):
    """Fault injection: rendering one neuron raises like an out-of-memory error would. The others are
    audited; the run is 3, stored as completed_with_errors with the neuron named, and alerted."""
    import audit.vital

    data = tiny_config_dict(webhook=webhook.url)
    data["models"][0]["versions"][1]["source"] = "builtin:efficientnet_lite0"      # no drift: nothing FAILs
    cfg = write_config(tmp_path, swapped_checkpoint, data)
    real = audit.vital.render_vital

    def render(model, requests, *args, **kwargs):
        if any(r.target.neuron_id == "espresso" for r in requests):
            raise RuntimeError("out of memory (injected)")
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(audit.vital, "render_vital", render)
    r = cli("run", "-c", str(cfg))
    assert r.code == 3, (r.out, r.err)
    assert "not audited:" in r.err and "espresso" in r.err and "out of memory (injected)" in r.err
    (run_id, status, error), = runs(tmp_path)
    assert status == "completed_with_errors" and "espresso" in error
    assert any(m.get("kind") == "audit-incomplete" and "espresso" in m["text"] for m in webhook.received)
    assert db_counts(tmp_path / "store" / "audit.db")["activation_stats"] == 6        # the others were audited
