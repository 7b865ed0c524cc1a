"""Schema migrations, driven through Alembic's API (no alembic.ini needed).

`upgrade(url)` on an empty database creates the whole schema.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .db import WRITE_OPTION, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 740_391_201   # arbitrary constant: the advisory lock of neuron-audit migrations


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _run(url: str, fn) -> None:
    """Run an Alembic command in one transaction (SQLite: BEGIN IMMEDIATE, so concurrent upgrades queue)."""
    engine = make_engine(url)
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            if conn.dialect.name == "postgresql":   # two processes upgrading at once: one waits for the other
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            fn(cfg)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (creates every table on an empty database)."""
    _run(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to `revision` ("base" drops every table of the store)."""
    _run(url, lambda cfg: command.downgrade(cfg, revision))


def current(url: str) -> str | None:
    """The revision the database is at (None: not under migration control / empty)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
