"""Engines and sessions.

SQLite: WAL journal, busy timeout, foreign keys on; write transactions start with
`BEGIN IMMEDIATE` (engine option `neuron_audit_write=True`) so two writers queue on the
busy timeout instead of failing on a read-to-write lock upgrade. PostgreSQL via psycopg 3.
Connecting is retried with exponential backoff; then `StoreUnavailableError`.

`make_engine(url, read_only=True)` is for readers that must never write (dashboard, report):
SQLite opens the file with `mode=ro` (no file, folder or WAL switch is created), PostgreSQL
sessions start with `default_transaction_read_only=on`.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "neuron_audit_write"


_SECRET_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)=)[^&;\s]+")


def mask_url(url: str) -> str:
    """The URL fit to show or log: the userinfo password and secret query values (`?password=`,
    `token=`, ...) replaced by ***. The one masker of the project: the store, the preflight and the
    dashboard all call it, so a secret hidden in one place is hidden in all."""
    s = str(url)
    try:
        parts = urlsplit(s)
        if parts.password is not None:
            user, host = parts.username or "", parts.netloc.rsplit("@", 1)[1]
            s = urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
    except ValueError:            # an unparsable netloc (e.g. a bad port): mask by pattern
        s = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", s)
    return _SECRET_QUERY.sub(r"\1***", s)


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` use psycopg 3 (`postgresql+psycopg://`)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _install_sqlite_events(engine: Engine, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through every test
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's implicit BEGIN is lazy).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        if not read_only:          # switching the journal mode writes the file
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        else:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL (None for memory databases and other backends)."""
    try:
        parsed = make_url(normalize_url(str(url)))
    except ArgumentError:
        return None
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    if db.startswith("file:"):
        db = db[len("file:"):].split("?", 1)[0]
    return Path(db).expanduser()


def make_engine(url: str, *, retries: int = 4, backoff_s: float = 0.25, echo: bool = False, check: bool = True,
                read_only: bool = False) -> Engine:
    """An Engine for `url` (SQLite file/memory or PostgreSQL), connected once to check it.

    Retries `retries` times with exponential backoff (backoff_s, 2*backoff_s, ...) on
    OperationalError, then raises StoreUnavailableError(masked url, reason).
    read_only=True: an engine that cannot write (see the module docstring); a SQLite file that
    does not exist is StoreUnavailableError, never created.
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
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if read_only and db and db != ":memory:":
            path = sqlite_path(url)
            if path is None or not path.is_file():
                raise StoreUnavailableError(mask_url(url), f"there is no SQLite file at {path}")
            url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
        elif db and db != ":memory:" and not db.startswith("file:"):
            try:
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(mask_url(url), f"cannot create the directory of the SQLite file: {exc}") from exc
    else:
        kwargs["pool_pre_ping"] = True
        if backend == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
            if read_only:
                kwargs["connect_args"]["options"] = "-c default_transaction_read_only=on"
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:  # unknown dialect (NoSuchModuleError), missing driver
        raise StoreUnavailableError(mask_url(url), f"{type(exc).__name__}: {exc}") from exc
    if backend == "sqlite":
        _install_sqlite_events(engine, read_only)
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
