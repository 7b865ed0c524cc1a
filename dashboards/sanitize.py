"""What the dashboard may show and serve: URLs without secrets, links only to http(s), artifact files
only from inside the artifact root, and a store label without machine paths."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.db import mask_url as _store_mask_url



def mask_url(url: Any) -> str | None:
    """A URL fit to show (None stays None): storage's masker, the one the store and preflight use."""
    return None if url is None else _store_mask_url(url)


def link_url(url: str | None) -> str | None:
    """A base URL fit for an href: no userinfo at all, no trailing slash; only http(s)."""
    if not url:
        return None
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def store_label(url: Any) -> str | None:
    """How the footer names the store: a SQLite file by its name only (a full path would show the machine's
    folders in every page and screenshot), any other database by its URL with the password masked."""
    if not url:
        return None
    s = str(url)
    if s.startswith("sqlite"):
        try:
            db = make_url(s).database
        except ArgumentError:
            db = None
        name = str(db or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        return f"SQLite {name}" if name and name != ":memory:" else "SQLite (in memory)"
    return mask_url(s)


def safe_artifact(root: Path, rel: Any, *, resolved_root: Path | None = None) -> Path | None:
    """`root/rel` resolved, when it is an existing file inside `root`; else None.
    `resolved_root`: `root.resolve()` when the caller has it already (saves a syscall per image)."""
    if rel is None:
        return None
    s = str(rel)
    if not s or "\x00" in s:
        return None
    try:
        root_r = resolved_root or Path(root).resolve()
        p = (root_r / s).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    if not p.is_relative_to(root_r) or p == root_r:
        return None
    try:
        if not p.is_file():
            return None
    except OSError:
        return None
    return p


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from a PNG header; None for other files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None
