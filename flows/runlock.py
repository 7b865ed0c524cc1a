"""One writer at a time on a SQLite store.

SQLite serializes single transactions (WAL, busy timeout, BEGIN IMMEDIATE, retries), but two whole
audits interleaving on one file make each other's transactions wait and retry for their whole
length, and MLflow's own SQLite store is not built for it. So an audit (run, compare, demo) takes
an exclusive lock on `<database>.lock` for its duration: a second audit of the same store waits for
the first (printing who holds it) and then finds the first one's results stored. The lock is a
kernel lock (flock): a killed holder releases it at once. PostgreSQL stores take no lock: their
audits run in parallel, and unique keys with upserts keep them free of duplicates.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from storage.db import sqlite_path

WAIT_S = float(os.environ.get("NEURON_AUDIT_LOCK_WAIT_S", str(6 * 3600)))


class StoreBusyError(RuntimeError):
    """Another audit held the store for longer than we may wait (exit 4)."""


def lock_path(database_url: str) -> Path | None:
    db = sqlite_path(database_url)
    return None if db is None else db.with_name(db.name + ".lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another neuron-audit process"
    return f"neuron-audit pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('since')})"


@contextmanager
def exclusive_store(database_url: str, command: str, *, wait_s: float | None = None,
                    notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the store's writer lock while the block runs (SQLite only; a no-op for other databases or
    when the lock file cannot be created, e.g. a read-only folder, which the preflight reports)."""
    path = lock_path(database_url)
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError:
        yield
        return
    wait_s = WAIT_S if wait_s is None else wait_s
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if notify:
                notify(f"the store {path.with_suffix('')} is being written by {_holder(path)}; waiting for it to "
                       f"finish (up to {wait_s / 60:.0f} min)")
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(f"the store {path.with_suffix('')} is still being written by "
                                             f"{_holder(path)} after {wait_s:.0f} s; try again later") from None
                    time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        yield
    finally:
        fh.close()            # releases the lock
