"""Log lines a scheduler can read: every long stage of an audit, a watch or the demo logs one line when it
starts and one when it ends, with its duration and what it produced, through the standard `logging`
module (loggers `neuron_audit.*`), so that a deployment can route them like any other log.

    with stage("render", "6 visualizations of lite0 v2", log) as st:
        ...
        st.count(**{"re-rendered": 2, "reused": 4})
    # render 6 visualizations of lite0 v2 …
    # render 6 visualizations of lite0 v2 … done in 41.2 s, 2 re-rendered, 4 reused

Each record carries the structured fields `stage`, `subject`, `event` (start, end, failed), and at the end
`duration_s` and `counts`; `--json-logs` writes every record as one JSON object per line. The console
handler is installed by the CLI (`configure`) or, in a process a scheduler started (a Prefect worker),
from the environment (`configure_from_env`: NEURON_AUDIT_JSON_LOGS, NEURON_AUDIT_QUIET)."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

ROOT = "neuron_audit"
JSON_ENV = "NEURON_AUDIT_JSON_LOGS"
QUIET_ENV = "NEURON_AUDIT_QUIET"

# The attributes every LogRecord has: anything else on a record is a structured field of ours.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def get_logger(name: str) -> logging.Logger:
    """The logger `neuron_audit.NAME` (e.g. "audit", "watch", "demo")."""
    return logging.getLogger(f"{ROOT}.{name}")


@dataclass
class Stage:
    """A running stage: the caller attaches what it produced with `count`."""

    name: str
    subject: str = ""
    counts: dict = field(default_factory=dict)

    def count(self, **counts) -> None:
        self.counts.update(counts)


def describe_counts(counts: dict) -> str:
    """`2 re-rendered, 10 reused` (a number before its label, any other value after it: `verdict FAIL`)."""
    parts = []
    for label, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            parts.append(f"{label} {value}")
        else:
            parts.append(f"{value:g} {label}" if isinstance(value, float) else f"{value} {label}")
    return ", ".join(parts)


@contextmanager
def stage(name: str, subject: str = "", log: logging.Logger | None = None, **fields) -> Iterator[Stage]:
    """Log the start of stage `name` (about `subject`), then its end with the duration and the counts the
    caller attached; an exception ends it as `failed` (a warning naming the exception) and propagates."""
    log = log or get_logger("stage")
    what = f"{name} {subject}".strip()
    base = {"stage": name, "subject": subject, **fields}
    log.info("%s …", what, extra={**base, "event": "start"})
    st = Stage(name, subject)
    t0 = time.perf_counter()
    try:
        yield st
    except BaseException as exc:
        seconds = time.perf_counter() - t0
        log.warning("%s … failed after %.1f s: %s", what, seconds, exc.__class__.__name__,
                    extra={**base, "event": "failed", "duration_s": round(seconds, 3), "counts": st.counts,
                           "error": f"{exc.__class__.__name__}: {exc}"})
        raise
    seconds = time.perf_counter() - t0
    produced = describe_counts(st.counts)
    log.info("%s … done in %.1f s%s", what, seconds, f", {produced}" if produced else "",
             extra={**base, "event": "end", "duration_s": round(seconds, 3), "counts": st.counts})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (UTC, ISO 8601), level, logger, message, then the record's
    structured fields (stage, subject, event, duration_s, counts, ...) and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        doc = {"timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record: rich's live progress display
    redirects it (the line goes above the bars), and so do tests that capture it."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _formatter(json_logs: bool) -> logging.Formatter:
    return JsonFormatter() if json_logs else logging.Formatter(TEXT_FORMAT, "%Y-%m-%d %H:%M:%S")


def configure(quiet: bool = False, json_logs: bool = False) -> None:
    """The console handler of the `neuron_audit` loggers (stderr): INFO and up, or WARNING and up when
    `quiet`; text lines, or JSON objects when `json_logs`. The choice is exported in the environment so
    that the processes this one starts (Prefect flow runs, Dask workers) log the same way. Replaces the
    handler an earlier call installed."""
    os.environ[JSON_ENV] = "1" if json_logs else "0"
    os.environ[QUIET_ENV] = "1" if quiet else "0"
    root = logging.getLogger(ROOT)
    for h in [h for h in root.handlers if getattr(h, "_neuron_audit", False)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler._neuron_audit = True
    handler.setFormatter(_formatter(json_logs))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False          # the root logger's console handler (Prefect's) would print each line again


def unconfigure() -> None:
    """Remove the console handler `configure` installed (the logging of one in-process CLI call ends with it)."""
    root = logging.getLogger(ROOT)
    for h in [h for h in root.handlers if getattr(h, "_neuron_audit", False)]:
        root.removeHandler(h)
    root.setLevel(logging.NOTSET)
    root.propagate = True


def configure_from_env() -> None:
    """In a process a scheduler started (a Prefect worker's flow run): install the console handler as the
    environment says, unless one is installed already."""
    if not any(getattr(h, "_neuron_audit", False) for h in logging.getLogger(ROOT).handlers):
        configure(quiet=os.environ.get(QUIET_ENV) == "1", json_logs=os.environ.get(JSON_ENV) == "1")


def adopt_console_handlers(loggers=("", "prefect", "uvicorn", "fastapi")) -> None:
    """Prefect's console handlers (on the root logger and its server loggers) follow the same choice:
    JSON objects under --json-logs, warnings and errors only under --quiet."""
    json_logs, quiet = os.environ.get(JSON_ENV) == "1", os.environ.get(QUIET_ENV) == "1"
    for name in loggers:
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and not getattr(h, "_neuron_audit", False):
                if json_logs:
                    h.setFormatter(JsonFormatter())
                if quiet:
                    h.setLevel(max(h.level, logging.WARNING))


def message_level(line: str) -> int:
    """The level of one of the CLI's own stderr lines, by its prefix: `error:`, `not audited:` and
    `interrupted:` are errors, `warning:` and `waiting:` warnings, the rest (notes, what was written) information."""
    if line.startswith(("error:", "not audited:", "interrupted:")):
        return logging.ERROR
    if line.startswith(("warning:", "waiting:")):
        return logging.WARNING
    return logging.INFO


class LineStream:
    """A text stream that hands each complete line to `line` (rich's console writes a message in pieces):
    what the CLI's stderr console writes to under --json-logs and --quiet."""

    def __init__(self):
        self._buffer = ""

    def line(self, text: str) -> None:
        raise NotImplementedError

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.strip():
                self.line(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            self.line(self._buffer)
        self._buffer = ""

    def isatty(self) -> bool:
        return False


class LinesToLog(LineStream):
    """Each line becomes a record of `log` at its `message_level` (under --json-logs: a JSON object)."""

    def __init__(self, log: logging.Logger):
        super().__init__()
        self.log = log

    def line(self, text: str) -> None:
        self.log.log(message_level(text), text)


class QuietLines(LineStream):
    """Only the warning and error lines pass to stderr (under --quiet)."""

    def line(self, text: str) -> None:
        if message_level(text) >= logging.WARNING:
            sys.stderr.write(text + "\n")
