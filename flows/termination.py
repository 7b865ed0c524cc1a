"""Stopping: the one place that says what a stop does, used by the CLI (`neuron-audit`) and the flow.

The rules, in plain words:

1. **A stop received is a stop.** Schedulers stop jobs with SIGTERM (Kubernetes, systemd, docker stop,
   Prefect's own runner); a person stops one with Ctrl-C. One signal is enough, a second is never needed.
   Inside `graceful_termination()` (installed by the CLI around every command) SIGTERM raises
   `AuditInterrupted` in the main thread; Prefect's `TerminationSignal` and `KeyboardInterrupt` count the
   same (`is_interruption`). The stop is also remembered (`stop_requested`) whichever Python handler is
   installed at that moment (Prefect replaces ours while a flow runs), so a stop is never swallowed:
   - an error met after it (an interruption some library converted into another exception on its way
     up, the Prefect server that died with the same signal) is the interruption (`is_stop`,
     `raise_if_stop_requested`), never recorded as a broken neuron or version;
   - an interruption that a finalizer swallowed (a weakref callback in SQLAlchemy's garbage collection,
     where Python only prints "Exception ignored in ...") is raised again in the main thread;
   - a flow that reaches its end after a stop raises it there, so it never finishes "completed".
2. **The run's outcome.** The code in progress unwinds; results already stored stay stored (each
   neuron's results are one transaction). The run is marked `interrupted` (`stoppable_run`), and the
   process exits 143 after SIGTERM, 130 after Ctrl-C (`stop_exit_code`). The run is resumable: a re-run
   of the same command reuses every stored result by its content key and computes only the rest. A run
   killed without a chance to unwind (SIGKILL) is marked `interrupted` by the next run (storage.process).
3. **Cleanups run last-registered first** (`on_forced_exit`), as atexit and ExitStack do: the run's own
   "mark interrupted" (registered inside the flow) goes before stopping the temporary Prefect server the
   flow ran on (registered before it), which can be slow when that server is going down with the same
   signal. A cleanup that fails with an error it may meet on the way out is passed over: the next run
   marks and repairs what is left.
4. **The watchdog guarantees the exit.** It is armed when SIGTERM arrives (through the signal module's
   wakeup file descriptor and a thread that reads it, so whatever Python handler is installed) and when
   a run starts unwinding from a stop. When the process has not exited GRACE_S seconds later
   (`NEURON_AUDIT_TERM_GRACE_S`, default 5: Prefect reporting the crash to a server that died with the
   same signal, a long native operation), it runs the registered cleanups, waiting for them at most
   CLEANUP_S seconds, says so in one line on stderr and ends the process with `os._exit(143)`.
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


def is_stop(exc: BaseException) -> bool:
    """Whether `exc` ends the run as a stop: an interruption, or any error met after a stop was received
    (rule 1: a stop received is a stop)."""
    return is_interruption(exc) or _requested is not None


def stop_exit_code(exc: BaseException) -> int | None:
    """The exit code of a process that `exc` ends (130 after Ctrl-C, 143 after SIGTERM) when it is a stop,
    else None."""
    return exit_code_for(exc) if is_stop(exc) else None


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


INTERRUPTED = "interrupted"                 # the run state a stop leaves (resumable: a re-run reuses what is stored)


@contextmanager
def stoppable_run(finish: Callable[[str, str], None]) -> Iterator[None]:
    """The stop rules around one audit run. `finish(status, text)` records the run's end state.

    While the block runs, a forced exit by the watchdog calls `finish("interrupted", ...)` among its cleanups.
    An exception out of the block ends the run: as `interrupted` when it is a stop (the watchdog is armed,
    so the rest of the way out is bounded, and an error that a stop caused is raised as the
    `AuditInterrupted` it is), as `failed` otherwise. A block that ends normally records its own end state."""
    mark_interrupted = on_forced_exit(lambda: finish(INTERRUPTED, "interrupted by SIGTERM; finished results are kept"))
    try:
        yield
    except BaseException as exc:
        stopped = is_stop(exc)
        if stopped:
            arm_watchdog(EXIT_SIGTERM)
            finish(INTERRUPTED, f"interrupted ({exc.__class__.__name__}); finished results are kept")
        else:
            finish("failed", f"{exc.__class__.__name__}: {exc}")
        if stopped and not is_interruption(exc):
            raise AuditInterrupted(_requested) from exc
        raise
    finally:
        remove_forced_exit(mark_interrupted)
