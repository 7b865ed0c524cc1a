"""Timestamps as the store writes and returns them: timezone-aware UTC datetimes in rows,
ISO-8601 UTC strings in the plain dicts that read queries return."""
from __future__ import annotations

from datetime import datetime, timezone


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def aware(dt: datetime | None) -> datetime | None:
    """`dt` with UTC attached when it is naive (SQLite returns naive datetimes)."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def iso(dt: datetime | None) -> str | None:
    """`dt` as an ISO-8601 UTC string to the second (naive datetimes are read as UTC)."""
    if dt is None:
        return None
    return aware(dt).astimezone(timezone.utc).isoformat(timespec="seconds")
