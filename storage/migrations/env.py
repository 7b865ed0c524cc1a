"""Alembic environment. Driven programmatically by storage/migrate.py, which passes an open
connection in `config.attributes["connection"]`; a bare `alembic` call may instead set
`sqlalchemy.url` (or the NEURON_AUDIT_DATABASE env var)."""
from __future__ import annotations

import os

from alembic import context

from storage.schema import metadata

config = context.config


def _configure(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("NEURON_AUDIT_DATABASE")
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    from storage.db import make_engine

    url = config.get_main_option("sqlalchemy.url") or os.environ.get("NEURON_AUDIT_DATABASE")
    engine = make_engine(url)
    with engine.connect() as conn:
        _configure(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
