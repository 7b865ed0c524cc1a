"""Engines and sessions.

SQLite: WAL journal, busy timeout, foreign keys on; write transactions start with
`BEGIN IMMEDIATE` (engine option `neuron_audit_write=True`) so two writers queue on the
busy timeout instead of failing on a read-to-write lock upgrade. PostgreSQL via psycopg 3.
Connecting is retried with exponential backoff; then `StoreUnavailableError`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "neuron_audit_write"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` use psycopg 3 (`postgresql+psycopg://`)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def is_sqlite(engine_or_url) -> bool:
    name = engine_or_url.dialect.name if hasattr(engine_or_url, "dialect") else make_url(str(engine_or_url)).get_backend_name()
    return name == "sqlite"


def _install_sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through every test
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's implicit BEGIN is lazy).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


def make_engine(url: str, *, retries: int = 4, backoff_s: float = 0.25, echo: bool = False, check: bool = True) -> Engine:
    """An Engine for `url` (SQLite file/memory or PostgreSQL), connected once to check it.

    Retries `retries` times with exponential backoff (backoff_s, 2*backoff_s, ...) on
    OperationalError, then raises StoreUnavailableError(masked url, reason).
    """
    url = normalize_url(str(url))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreUnavailableError(url, f"not a database URL ({exc})") from None
    backend = parsed.get_backend_name()
    kwargs: dict = {"echo": echo, "future": True}
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            try:
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(mask_url(url), f"cannot create the directory of the SQLite file: {exc}") from exc
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
        if backend == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # unknown dialect, missing driver
        raise StoreUnavailableError(mask_url(url), f"{type(exc).__name__}: {exc}") from exc
    if backend == "sqlite":
        _install_sqlite_events(engine)
    if check:
        _check_connect(engine, url, retries, backoff_s)
    return engine


def _check_connect(engine: Engine, url: str, retries: int, backoff_s: float) -> None:
    delay = backoff_s
    for attempt in range(retries + 1):
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return
        except (OperationalError, DBAPIError) as exc:
            reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
            if attempt == retries:
                engine.dispose()
                raise StoreUnavailableError(mask_url(url), f"{reason} (after {retries + 1} attempts)") from exc
            time.sleep(delay)
            delay *= 2


def session_factory(engine: Engine, write: bool = False) -> sessionmaker[Session]:
    bind = engine.execution_options(**{WRITE_OPTION: True}) if write else engine
    return sessionmaker(bind=bind, expire_on_commit=False, future=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
