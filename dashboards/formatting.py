"""How values look on the pages: times, durations, numbers, verdict and status badges, and the
Jinja2 environment that exposes them to the templates as filters."""
from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from .sanitize import mask_url

TEMPLATES_DIR = Path(__file__).parent / "templates"
VERDICTS = ("FAIL", "WARN", "PASS")
SEVERITY = {"FAIL": 0, "WARN": 1, "PASS": 2}
_EPOCH = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def as_dt(v: Any) -> _dt.datetime | None:
    """A timezone-aware datetime from a datetime or an ISO string (naive values are UTC); None otherwise."""
    if isinstance(v, _dt.datetime):
        return v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)
    if isinstance(v, str):
        try:
            d = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            return None
    return None


def time_key(v: Any) -> _dt.datetime:
    """Sort key of a timestamp: missing or unreadable ones sort first."""
    return as_dt(v) or _EPOCH


def float_or(v: Any, default: float) -> float:
    """`v` as a finite float, else `default`."""
    try:
        x = float(v)
        return x if math.isfinite(x) else default
    except (TypeError, ValueError):
        return default


def quantile_key(k: Any) -> float:
    """Sort key of a quantile label such as "0.5", "q0.95" or "p90"."""
    m = re.search(r"[\d.]+", str(k))
    try:
        return float(m.group()) if m else math.inf
    except ValueError:
        return math.inf


def fmt_time(v: Any) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, (int, float)):
        v = _dt.datetime.fromtimestamp(v, tz=_dt.timezone.utc)
    if isinstance(v, str):
        try:
            v = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return v
    if isinstance(v, _dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(_dt.timezone.utc)
        return v.strftime("%Y-%m-%d %H:%M") + " UTC"
    return str(v)


def fmt_duration(v: Any) -> str:
    if v is None:
        return "—"
    try:
        s = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == int(x) and abs(x) < 1e6 and isinstance(v, int):
        return str(int(x))
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def badge(verdict: Any) -> Markup:
    v = str(verdict).upper() if verdict else ""
    if v in SEVERITY:
        return Markup(f'<span class="badge badge-{v.lower()}">{v}</span>')
    return Markup('<span class="badge badge-none">—</span>')


def status_badge(status: Any) -> Markup:
    s = str(status or "unknown")
    low = s.lower()
    cls = ("ok" if low in ("completed", "success", "succeeded", "ok", "finished", "done", "sent", "delivered")
           else "bad" if low in ("failed", "crashed", "error", "errored", "cancelled", "canceled", "interrupted",
                                 "completed_with_errors")
           else "run" if low in ("running", "pending", "scheduled", "started")
           else "none")
    return Markup(f'<span class="status status-{cls}">{escape(s)}</span>')


def short_id(v: Any, n: int = 8) -> str:
    """The first `n` characters of an id (run ids are long hex strings)."""
    return str(v)[:n] if v is not None else ""


def jinja_env() -> jinja2.Environment:
    """The templates' environment: autoescaped HTML, the formatting filters, the verdict order."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, duration=fmt_duration, num=fmt_num, badge=badge,
                       status_badge=status_badge, mask_url=mask_url, short_id=short_id)
    env.globals.update(badge=badge, VERDICTS=VERDICTS)
    return env
