"""Migrations and engines on both backends."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from storage import migrate
from storage.db import make_engine, mask_url
from storage.errors import StoreUnavailableError
from storage.schema import metadata

TABLES = {"models", "model_versions", "neurons", "probe_sets", "audit_runs", "visualizations", "version_visualizations",
          "activation_stats", "drift_results", "alerts", "mlflow_runs", "mlflow_logged"}


def _tables(url):
    eng = make_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_upgrade_from_empty_creates_schema_matching_models(db_url):
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() == "0003_mlflow"
    assert _tables(db_url) == TABLES
    migrate.upgrade(db_url)   # idempotent
    # the hand-checked migration and the ORM models agree (no autogenerate diff)
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    eng = make_engine(db_url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    eng.dispose()
    assert diff == []


def test_downgrade_upgrade_round_trip(db_url):
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None and _tables(db_url) == set()
    migrate.upgrade(db_url, "0001")
    assert migrate.current(db_url) == "0001" and _tables(db_url) == TABLES - {"mlflow_logged"}
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() and _tables(db_url) == TABLES


def test_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path}/new/dir/a.db"     # parent directories are created
    eng = make_engine(url)
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10000
    eng.dispose()
    assert (tmp_path / "new" / "dir" / "a.db").exists()



def test_unreachable_postgres_is_store_unavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://auditor:s3cret@127.0.0.1:{port}/audit"
    with pytest.raises(StoreUnavailableError) as ei:
        make_engine(url, retries=2, backoff_s=0.01)
    msg = str(ei.value)
    assert "s3cret" not in msg and "***" in msg and f"127.0.0.1:{port}" in msg and "after 3 attempts" in msg
    assert mask_url(url) == f"postgresql://auditor:***@127.0.0.1:{port}/audit"


def test_unopenable_sqlite_is_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailableError):
        make_engine(f"sqlite:///{blocker}/sub/a.db", retries=1, backoff_s=0.01)


def test_store_upgrade_flag_and_schema_check(db_url, tmp_path):
    from storage.repository import AuditStore

    st = AuditStore(db_url, tmp_path / "art")
    assert not st.schema_is_current()
    st.close()
    st = AuditStore(db_url, tmp_path / "art", upgrade=True)
    assert st.schema_is_current() and st.list_models() == []
    st.close()
