"""The Prefect flows under prefect_test_harness: `watch_batch` on a folder, and `watch_inbox`
watching each new sub-folder of the inbox once (a folder still arriving waits; a bad one is
reported and stores nothing)."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from watch_testlib import write_config


@pytest.mark.slow
def test_watch_batch_flow_and_inbox_processes_each_folder_once(tmp_path, batches, watch_prefect, mlflow_uri):
    from flows import runtime
    from flows.watch_flow import watch_batch, watch_inbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "cfg", watch={"inbox": str(inbox), "settle_seconds": 3600}, mlflow=mlflow_uri)
    report = watch_batch(str(config), "lite0", str(batches["blurred"]), batch_id="manual")
    assert report["verdict"] == "FAIL" and report["batch_id"] == "manual" and report["mlflow_run_id"]

    shutil.copytree(batches["clean"], inbox / "2026-12-01")
    shutil.copytree(batches["blurred"], inbox / "2026-12-02")
    shutil.copytree(batches["clean"], inbox / "2026-12-03")        # still arriving: a file written just now
    os.utime(next((inbox / "2026-12-03").iterdir()), None)
    old = time.time() - 7200
    for name in ("2026-12-01", "2026-12-02"):
        for f in [inbox / name, *(inbox / name).iterdir()]:
            os.utime(f, (old, old))
    summary = watch_inbox(str(config))
    assert [(b["batch_id"], b["verdict"] == "FAIL") for b in summary["batches"]] == [
        ("2026-12-01", False), ("2026-12-02", True)]
    store = runtime.store(str(config))
    counts = store.counts()
    assert watch_inbox(str(config))["batches"] == []                  # processed once
    assert store.counts() == counts

    (inbox / "2026-12-04").mkdir()                                    # a batch with no images
    (inbox / "2026-12-04" / "readme.txt").write_text("x")
    for f in [inbox / "2026-12-03", *(inbox / "2026-12-03").iterdir(), inbox / "2026-12-04",
              *(inbox / "2026-12-04").iterdir()]:
        os.utime(f, (old, old))
    with pytest.raises(RuntimeError, match="2026-12-04.*only 0 usable"):
        watch_inbox(str(config))
    assert store.batches.get_batch("lite0", "2026-12-03") is not None
    assert store.batches.get_batch("lite0", "2026-12-04") is None
