"""Stopping on SIGTERM within seconds, finished results kept.

Schedulers stop jobs with SIGTERM (Kubernetes, systemd, docker stop, Prefect's own runner). The
CLI installs `graceful_termination()`: SIGTERM raises `AuditInterrupted` in the main thread (Prefect's
own bridge raises `TerminationSignal` inside a flow; both count as interruption), so the code in
progress unwinds: results already stored stay stored (each neuron's results are one transaction),
the run is marked `interrupted`, and the process exits with 143.

A watchdog guarantees the exit. The signal reaches it whichever Python handler is installed at that
moment (Prefect replaces ours while a flow runs), through the signal module's wakeup file descriptor
and a thread that reads it. When unwinding takes longer than the grace period (Prefect reporting
the crash to a server that died with the same signal, a long native operation), the watchdog runs
the registered cleanups (mark the run interrupted, stop the temporary Prefect server), waiting for
them at most a few seconds, says so on stderr, and ends the process with `os._exit(143)`. A run that is
killed without a chance to unwind (SIGKILL) is marked `interrupted` by the next run (see storage.process).

A signal handler raises in whatever Python code the main thread runs at that moment, and that can be a
finalizer (a weakref callback inside SQLAlchemy's garbage collection, say), where Python swallows the
exception and prints its traceback as "Exception ignored in ...". While the block runs, an
interruption swallowed that way is delivered again to the main thread, so it still unwinds. And a stop
received is remembered (`stop_requested`): an error met after it is raised as the interruption
(`raise_if_stop_requested`), never recorded as a broken neuron, and the flow never finishes "completed".
"""
from __future__ import annotations

import _thread
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

EXIT_SIGTERM = 128 + signal.SIGTERM        # 143, the shell's convention
EXIT_SIGINT = 128 + signal.SIGINT          # 130
GRACE_S = float(os.environ.get("NEURON_AUDIT_TERM_GRACE_S", "5"))
CLEANUP_S = 3.0                            # the watchdog waits this long for its cleanups, then exits anyway

_cleanups: list[Callable[[], None]] = []
_watchdog: threading.Timer | None = None
_requested: int | None = None              # the stop signal received while graceful_termination() is active


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


def stop_requested() -> int | None:
    """The signal number of a stop (SIGTERM) received while `graceful_termination()` is active, else None.
    Set whatever Python handler was installed, and whether or not its exception reached the code."""
    return _requested


def raise_if_stop_requested(cause: BaseException | None = None) -> None:
    """Raise AuditInterrupted when a stop was requested: an error met while the process is being stopped
    (an interruption converted into another exception on its way up) is the interruption, not a fault of
    the neuron or version being computed."""
    if _requested is not None:
        raise AuditInterrupted(_requested) from cause


def _note_stop(signum: int | None) -> None:
    global _requested
    _requested = signum


def on_forced_exit(fn: Callable[[], None]) -> Callable[[], None]:
    """Register a cleanup the watchdog runs before it ends the process (e.g. stop a child server);
    cleanups run last-registered first."""
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

    def cleanups() -> None:
        expected = _cleanup_errors()
        # Last registered first, as atexit and ExitStack do: the run's own "mark interrupted" (registered
        # inside the flow) goes before stopping the Prefect server the flow ran on (registered before it),
        # which can take most of CLEANUP_S when the server is already going down with the same signal.
        for fn in reversed(list(_cleanups)):
            try:
                fn()
            except expected:     # best effort: the next run marks and repairs what is left
                pass

    def fire() -> None:
        worker = threading.Thread(target=cleanups, daemon=True)
        worker.start()
        worker.join(CLEANUP_S)   # a cleanup stuck on a lock must not keep the process alive
        name = signal.Signals(code - 128).name if code > 128 else str(code)
        try:
            os.write(2, f"interrupted: {name}; unwinding took longer than the grace period, so the process "
                        "ends now; finished results are kept, and a run not yet marked interrupted is marked by "
                        "the next run\n".encode())
        except OSError:          # stderr already closed: the exit code still says it
            pass
        os._exit(code)

    _watchdog = threading.Timer(GRACE_S if grace_s is None else grace_s, fire)
    _watchdog.daemon = True
    _watchdog.start()


def _cleanup_errors() -> tuple[type[BaseException], ...]:
    """What a cleanup on the way out may meet: I/O, a busy or gone database, a process already gone."""
    errors: list[type[BaseException]] = [OSError, RuntimeError, ValueError, LookupError]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    except ImportError:
        pass
    return tuple(errors)


def _handler(signum, frame) -> None:
    _note_stop(signum)
    arm_watchdog(EXIT_SIGTERM)
    raise AuditInterrupted(signum)


def _watch_wakeups(sock: socket.socket) -> None:
    """Arm the watchdog when SIGTERM arrives, whatever Python handler is installed (Prefect's included)."""
    while True:
        try:
            data = sock.recv(64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM in data:
            _note_stop(signal.SIGTERM)
            arm_watchdog(EXIT_SIGTERM)


REDELIVERIES = 3                           # a swallowed interruption is raised again at most this often


def _redeliver_swallowed(previous_hook: Callable) -> Callable:
    """An unraisable-exception hook: an interruption that a finalizer swallowed is raised again in the main
    thread, shortly after, through the installed Python handler (ours, or Prefect's while a flow runs);
    its traceback is not printed. Anything else goes to `previous_hook`. At most REDELIVERIES times: past
    that, the watchdog ends the process."""
    left = [REDELIVERIES]

    def redeliver(signum: int) -> None:
        time.sleep(0.05)         # let the garbage collection that ran the finalizer finish first
        _thread.interrupt_main(signum)   # a no-op when no Python handler is installed any more

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if exc is not None and is_interruption(exc) and left[0] > 0:
            left[0] -= 1
            signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            threading.Thread(target=redeliver, args=(signum,), daemon=True, name="sigterm-redeliver").start()
            return
        previous_hook(unraisable)

    return hook


@contextmanager
def graceful_termination() -> Iterator[None]:
    """SIGTERM raises AuditInterrupted in the main thread while the block runs, and arms the watchdog
    even while another handler is installed; an interruption swallowed by a finalizer is raised again
    (no-op off the main thread)."""
    try:
        previous = signal.signal(signal.SIGTERM, _handler)
    except ValueError:           # not the main thread
        yield
        return
    _note_stop(None)
    previous_unraisable = sys.unraisablehook
    sys.unraisablehook = _redeliver_swallowed(previous_unraisable)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:
        previous_fd = None
    threading.Thread(target=_watch_wakeups, args=(reader,), daemon=True, name="sigterm-watchdog").start()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_unraisable
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
        writer.close()
        reader.close()
