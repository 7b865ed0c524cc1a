"""Waits on a real process that end when it stops making progress, not at a fixed clock.

A loaded 2-core machine runs the same end-to-end command three or more times slower than a quiet one;
a fixed timeout then fails the test for a reason that is not a bug. `run_while_progressing` lets the
process run as long as it keeps writing (its output, or any file under the folders it works in), and
stops it only after `stall_s` seconds in which nothing moved."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STALL_S = 900.0      # no output and no file written for this long: a hang, on any machine
# The bound of a wait whose process is alive and cannot show finer progress: a hang catcher only. An
# audit that is still starting (imports, a Prefect server booting) on a machine 3-10x slower than usual
# stays well inside it; the waits end as soon as the process answers or exits.
HANG_CAP_S = 1800.0


@dataclass
class Finished:
    returncode: int | None       # None when it was stopped for stalling
    stdout: str
    stderr: str
    stalled: bool


def _newest_change(folders: list[Path]) -> float:
    newest = 0.0
    for folder in folders:
        if not folder.exists():
            continue
        for root, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
                except OSError:        # written and removed between the walk and the stat
                    pass
    return newest


def run_while_progressing(cmd: list[str], watch: list[Path] | Path = (), stall_s: float = DEFAULT_STALL_S,
                          poll_s: float = 1.0, **popen) -> Finished:
    """Run `cmd` to its end while it makes progress: its stdout/stderr grow, or a file under `watch`
    changes. After `stall_s` seconds without either, its process group is killed (`stalled=True`)."""
    folders = [Path(watch)] if isinstance(watch, (str, Path)) else [Path(w) for w in watch]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, start_new_session=True, **popen)
        last_seen, last_move = None, time.monotonic()
        stalled = False
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                seen = (os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size, _newest_change(folders))
                if seen != last_seen:
                    last_seen, last_move = seen, time.monotonic()
                elif time.monotonic() - last_move > stall_s:
                    stalled = True
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        out.seek(0)
        err.seek(0)
        return Finished(None if stalled else proc.returncode, out.read(), err.read(), stalled)
