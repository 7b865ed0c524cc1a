"""The pieces the fault handling stands on, each against real files and processes: exit-code rules,
run ownership, artifact integrity, the preflight cache, the MLflow registry read without MLflow."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.outcome import exit_code, not_audited

ROOT = Path(__file__).resolve().parents[2]


def _summary(verdicts=("PASS",), errors=None, versions=None):
    return {"reports": [{"model": "m", "baseline": "1", "candidate": "2", "errors": {},
                         "neurons": [{"id": f"n{i}", "verdict": v} for i, v in enumerate(verdicts)]}],
            "versions": versions if versions is not None else [
                {"model": "m", "version": "2", "stats_computed": ["n0"], "stats_cached": [],
                 "neuron_errors": errors or {}}]}


def test_exit_codes_fail_wins_incomplete_is_3_nothing_audited_is_never_0():
    assert exit_code(_summary()) == 0
    assert exit_code(_summary(("PASS", "FAIL"))) == 1
    assert exit_code(_summary(errors={"n1": "visualization: RuntimeError: out of memory"})) == 3
    assert exit_code(_summary(("FAIL",), errors={"n1": "boom"})) == 1          # the FAIL is the news
    assert not_audited(_summary(errors={"n1": "boom"})) == [
        {"model": "m", "version": "2", "neuron": "n1", "reason": "boom"}]
    assert exit_code({"reports": [], "versions": []}) == 3                       # audited nothing
    assert exit_code(_summary(versions=[{"model": "m", "version": "2", "stats_computed": [], "stats_cached": [],
                                         "neuron_errors": {}}])) == 3


def test_the_watchdog_runs_the_cleanups_last_registered_first_then_exits_143(tmp_path):
    """The run's own "mark interrupted" is registered after the Prefect server's stop and must not wait
    behind it: a slow first-registered cleanup still lets the later one finish before the exit."""
    out = tmp_path / "order.txt"
    script = f"""
import time
from flows.termination import arm_watchdog, on_forced_exit
log = open({str(out)!r}, "a", buffering=1)
on_forced_exit(lambda: (log.write("server stop\\n"), time.sleep(30)))
on_forced_exit(lambda: log.write("mark interrupted\\n"))
arm_watchdog(grace_s=0.1)
time.sleep(60)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), timeout=30)
    assert done.returncode == 143
    assert out.read_text().splitlines() == ["mark interrupted", "server stop"]



def test_an_interruption_a_finalizer_swallowed_is_raised_again_in_the_main_thread():
    """SIGTERM's handler can run inside a weakref callback (SQLAlchemy's garbage collection), where Python
    swallows the exception and prints its traceback. The run must still unwind, print no traceback, and
    exit 143 by itself, not by the watchdog's forced exit."""
    script = """
import gc, sys, time, weakref
from flows.termination import AuditInterrupted, graceful_termination
class Held: pass
def finalizer(_):
    raise AuditInterrupted()      # as if the signal arrived while the callback ran
try:
    with graceful_termination():
        held = Held()
        ref = weakref.ref(held, finalizer)
        del held
        gc.collect()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sum(range(1000))
        print("not interrupted")
except AuditInterrupted:
    print("unwound")
    sys.exit(143)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), timeout=60, capture_output=True, text=True)
    assert done.returncode == 143, done.stderr
    assert done.stdout.strip() == "unwound", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "grace period" not in done.stderr, done.stderr


def test_a_stop_whose_exception_was_swallowed_still_counts_and_an_error_it_caused_is_the_interruption():
    """A library may install its own SIGTERM handler, or turn the interruption into another error on its
    way up. The stop is still known (through the wakeup descriptor), so the error it caused is raised as
    the interruption rather than recorded as a broken neuron, and the run is not reported complete."""
    script = """
import os, signal, sys, time
from flows.termination import AuditInterrupted, graceful_termination, raise_if_stop_requested, stop_requested
with graceful_termination():
    assert stop_requested() is None
    raise_if_stop_requested()                     # no stop: nothing happens
    signal.signal(signal.SIGTERM, lambda *a: None)  # a handler that swallows it
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 3
    while stop_requested() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        raise_if_stop_requested(RuntimeError("the interruption, converted on its way up"))
    except AuditInterrupted as e:
        print("interrupted", int(stop_requested()), type(e.__cause__).__name__)
        sys.exit(143)
print("not interrupted")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), timeout=60, capture_output=True, text=True)
    assert done.returncode == 143, done.stdout + done.stderr
    assert done.stdout.split() == ["interrupted", str(int(signal.SIGTERM)), "RuntimeError"], done.stdout + done.stderr

def test_a_run_ends_failed_on_an_error_and_interrupted_on_any_error_after_a_stop():
    """`stoppable_run`, the flow's stop rules: before a stop an error fails the run and goes up as itself;
    after a stop (its signal swallowed by another handler) the same error marks the run interrupted and
    goes up as the interruption, which the CLI turns into exit 143 (130 for Ctrl-C). The forced-exit
    cleanup lives only while the run does."""
    script = """
import os, signal, sys, time
from flows import termination as T
ends = []
finish = lambda status, text: ends.append((status, text))
try:
    with T.stoppable_run(finish):
        assert len(T._cleanups) == 1
        raise RuntimeError("boom")
except RuntimeError:
    pass
assert ends == [("failed", "RuntimeError: boom")] and T._cleanups == [], (ends, T._cleanups)
assert T.stop_exit_code(RuntimeError()) is None and T.stop_exit_code(KeyboardInterrupt()) == 130
with T.graceful_termination():
    signal.signal(signal.SIGTERM, lambda *a: None)  # a handler that swallows it
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 3
    while T.stop_requested() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with T.stoppable_run(finish):
            raise RuntimeError("the server died with the same signal")
    except T.AuditInterrupted as e:
        print(ends[-1][0], type(e.__cause__).__name__, T.stop_exit_code(RuntimeError()), len(T._cleanups))
        sys.stdout.flush()
        os._exit(0)                  # before the watchdog armed by the stop
print("not interrupted")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), timeout=60, capture_output=True, text=True,
                          env={**os.environ, "NEURON_AUDIT_TERM_GRACE_S": "30"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["interrupted", "RuntimeError", "143", "0"], done.stdout + done.stderr


def test_a_run_whose_process_died_is_marked_interrupted_and_a_live_one_is_not(tmp_path):
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db", tmp_path / "artifacts", upgrade=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = store.start_run(None, "cfg", "0")
    alive = store.start_run(None, "cfg", "0")
    from sqlalchemy import update

    from storage import schema as S

    with store.engine.begin() as conn:       # the first run was started by the process that has exited
        conn.execute(update(S.AuditRun).where(S.AuditRun.id == killed).values(pid=dead.pid, pid_started=None))
    assert store.mark_interrupted_runs() == [killed]
    assert store.run(killed)["status"] == "interrupted" and "interrupted" in store.run(killed)["error"]
    assert store.run(alive)["status"] == "running"
    assert store.mark_interrupted_runs() == []
    store.close()


def test_a_run_of_another_host_is_judged_by_the_age_of_its_heartbeat(tmp_path):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from storage import schema as S
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db", tmp_path / "artifacts", upgrade=True)
    silent, beating = store.start_run(None, "cfg", "0"), store.start_run(None, "cfg", "0")
    old = datetime.now(timezone.utc) - timedelta(hours=4)
    with store.engine.begin() as conn:       # both owned by a host this one cannot look into
        conn.execute(update(S.AuditRun).where(S.AuditRun.id.in_([silent, beating]))
                     .values(host="another-host.invalid", started_at=old, heartbeat_at=old))
    store.heartbeat(beating)
    assert store.mark_interrupted_runs(stale_heartbeat_s=3600) == [silent]
    assert store.run(silent)["status"] == "interrupted" and store.run(beating)["status"] == "running"
    store.close()


def test_artifact_integrity_is_checked_against_the_hash_in_the_name(tmp_path):
    from storage.artifacts import ArtifactStore

    a = ArtifactStore(tmp_path / "art")
    img = a.put_image(np.full((8, 8, 3), 200, dtype=np.uint8))
    arr = a.put_arrays({"max": np.arange(10.0)})
    assert a.verify(img) is None and a.verify(arr) is None
    p = a.path(img)
    p.write_bytes(p.read_bytes()[:20])
    assert a.verify(img).startswith(("hash mismatch", "unreadable"))
    assert a.put_image(np.full((8, 8, 3), 200, dtype=np.uint8)) == img and a.verify(img) is None   # rewritten
    a.path(arr).write_bytes(b"PK\x03\x04 not a zip")
    assert a.verify(arr).startswith("unreadable")
    assert a.put_arrays({"max": np.arange(10.0)}) == arr and a.verify(arr) is None
    a.path(img).unlink()
    assert a.verify(img) == "missing"
    assert ArtifactStore(tmp_path / "never", create=False).verify(img) == "missing"
    assert not (tmp_path / "never").exists()


def test_the_preflight_cache_spares_model_builds_for_unchanged_content(tmp_path, swapped_checkpoint):
    from audit.checks import CheckContext, MemoryCache, run_model_checks
    from audit.config import load_config
    from sources import load_model
    from tests.faults.conftest import tiny_config_dict, write_config

    cfg = load_config(write_config(tmp_path, swapped_checkpoint, tiny_config_dict()))
    built = []

    def counting(mcfg, vcfg):
        built.append(vcfg.version)
        return load_model(mcfg.architecture, vcfg.source, base_dir=cfg.base_dir)

    cache = MemoryCache()
    first = run_model_checks(CheckContext(cfg, cache=cache, load_model=counting))
    assert first.problems == [] and sorted(built) == ["1", "2"]
    second = run_model_checks(CheckContext(cfg, cache=cache, load_model=counting))
    assert second.problems == [] and sorted(built) == ["1", "2"], "a cached check built a model again"
    assert second.identities == first.identities
    cfg.models[0].neurons[2].index = 4000                     # a neuron changed: checked again, and found
    third = run_model_checks(CheckContext(cfg, cache=cache, load_model=counting))
    assert [p.key for p in third.problems] == ["models[0].neurons[2].index"] and len(built) == 4


def test_the_registry_is_read_without_mlflow_as_mlflow_wrote_it(tmp_path):
    import torch

    from audit.errors import AuditInputError
    from sources.mlflow_index import registered_versions, run_exists, version_identity
    from sources.mlflow_registry import register_state_dict

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    v1 = register_state_dict(uri, "reg-model", {"w": torch.zeros(3)})
    v2 = register_state_dict(uri, "reg-model", {"w": torch.ones(3)}, alias="champion")
    assert registered_versions("reg-model", uri) == [v1, v2] == ["1", "2"]
    with pytest.raises(AuditInputError, match="no-such-model"):
        registered_versions("no-such-model", uri)
    ident = version_identity("reg-model", "2", None, uri)
    assert ident == version_identity("reg-model", None, "champion", uri) != version_identity("reg-model", "1", None, uri)
    with pytest.raises(AuditInputError, match="no version '7'"):
        version_identity("reg-model", "7", None, uri)
    with pytest.raises(AuditInputError, match="no alias 'nope'"):
        version_identity("reg-model", None, "nope", uri)
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient(uri).get_model_version("reg-model", "1").run_id
    assert run_exists(run_id, uri) is True and run_exists("0" * 32, uri) is False
