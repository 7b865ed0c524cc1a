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


def step_reporter(stage: str):
    """A per-step callback for long loops (VITAL steps): (step, total) -> None."""
    return None if _callback is None else (lambda step, total, *_: report(stage, step, total))
