"""Stopping on SIGTERM within seconds, finished results kept.

Schedulers stop jobs with SIGTERM (Kubernetes, systemd, docker stop, Prefect's own runner). The
CLI installs `graceful_termination()`: SIGTERM raises `AuditInterrupted` in the main thread (Prefect's
own bridge raises `TerminationSignal` inside a flow; both count as interruption), so the code in
progress unwinds: results already stored stay stored (each neuron's results are one transaction),
the run is marked `interrupted`, and the process exits with 143. A watchdog started by the signal
guarantees the exit: when unwinding takes longer than the grace period (a Prefect API call that
retries, a long native operation), it stops the temporary Prefect server we started and ends the
process with `os._exit(143)`. A run that is killed without a chance to unwind (SIGKILL) is marked
`interrupted` by the next run (see storage.process).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

EXIT_SIGTERM = 128 + signal.SIGTERM        # 143, the shell's convention
EXIT_SIGINT = 128 + signal.SIGINT          # 130
GRACE_S = float(os.environ.get("NEURON_AUDIT_TERM_GRACE_S", "8"))

_cleanups: list[Callable[[], None]] = []
_watchdog: threading.Timer | None = None


class AuditInterrupted(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException, like KeyboardInterrupt, so that no
    `except Exception` turns it into a neuron error."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def is_interruption(exc: BaseException) -> bool:
    """SIGTERM (ours or Prefect's TerminationSignal), Ctrl-C."""
    return isinstance(exc, (AuditInterrupted, KeyboardInterrupt)) or type(exc).__name__ == "TerminationSignal"


def exit_code_for(exc: BaseException) -> int:
    return EXIT_SIGINT if isinstance(exc, KeyboardInterrupt) else EXIT_SIGTERM


def on_forced_exit(fn: Callable[[], None]) -> Callable[[], None]:
    """Register a cleanup the watchdog runs before it ends the process (e.g. stop a child server)."""
    _cleanups.append(fn)
    return fn


def remove_forced_exit(fn: Callable[[], None]) -> None:
    if fn in _cleanups:
        _cleanups.remove(fn)


def arm_watchdog(code: int = EXIT_SIGTERM, grace_s: float | None = None) -> None:
    """End the process with `code` after the grace period unless it exits first (idempotent)."""
    global _watchdog
    if _watchdog is not None:
        return

    def fire() -> None:
        try:
            for fn in list(_cleanups):
                fn()
        finally:                 # whatever a cleanup raises, the process ends now
            os._exit(code)

    _watchdog = threading.Timer(GRACE_S if grace_s is None else grace_s, fire)
    _watchdog.daemon = True
    _watchdog.start()


def _handler(signum, frame) -> None:
    arm_watchdog(EXIT_SIGTERM)
    raise AuditInterrupted(signum)


@contextmanager
def graceful_termination() -> Iterator[None]:
    """SIGTERM raises AuditInterrupted in the main thread while the block runs (no-op off the main thread)."""
    try:
        previous = signal.signal(signal.SIGTERM, _handler)
    except ValueError:           # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
