"""A process-wide progress hook: the CLI installs a rich display, the library and the
flows report stages and steps to it (a no-op when nothing is installed)."""
from __future__ import annotations

from typing import Callable

_callback: Callable[[str, int, int], None] | None = None


def set_callback(cb: Callable[[str, int, int], None] | None) -> None:
    global _callback
    _callback = cb


def report(stage: str, done: int = 0, total: int = 0) -> None:
    if _callback is not None:
        _callback(stage, done, total)


def step_reporter(stage: str, total: int):
    """A per-step callback for the optimizers' loops (VITAL, Fourier, MACO), which call it as
    progress(step, losses) with a 0-based step: shown as `stage  step+1/total`. The losses are not shown."""
    if _callback is None:
        return None
    return lambda step, *_losses: report(stage, int(step) + 1, total)
