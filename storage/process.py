"""Which process owns an audit run, and whether that process still lives.

A run row records the host, the pid and the pid's start time (Linux: field 22 of
/proc/PID/stat, clock ticks since boot), so that a pid reused by another program after a
crash is not mistaken for the audit. A run whose owner is gone was killed (SIGKILL, power
loss, OOM killer) and is marked `interrupted` by the next run that starts.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    started: str | None      # pid start time token; None where the platform does not tell


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing ')'
    return stat[stat.rfind(")") + 2:].split()


def _start_token(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (Linux), or None."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def current_process() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(socket.gethostname(), pid, _start_token(pid))


def owner_alive(host: str | None, pid: int | None, started: str | None) -> bool | None:
    """True/False when this host can tell whether the owner process lives; None for another host
    (or a row without an owner), where only the heartbeat's age can decide."""
    if host is None or pid is None or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by another user
        pass
    fields = _proc_stat(pid)
    if fields:
        if fields[0] in ("Z", "X"):
            return False         # killed, not yet reaped by its parent
        if started is not None and len(fields) > 19 and fields[19] != started:
            return False         # the pid was reused by another process
    return True
