"""Migrations and engines on both backends."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from storage import migrate
from storage.db import make_engine, mask_url
from storage.errors import StoreUnavailableError
from storage.schema import metadata

TABLES = {"models", "model_versions", "neurons", "probe_sets", "audit_runs", "visualizations", "version_visualizations",
          "activation_stats", "drift_results", "alerts", "mlflow_runs", "mlflow_logged", "audit_checks"}
TABLES_0001 = TABLES - {"audit_checks", "mlflow_logged"}
WATCH_TABLES = {"watch_batches", "watch_results", "watch_alerts"}      # 0004_watch


def _tables(url):
    eng = make_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_upgrade_from_empty_creates_schema_matching_models(db_url):
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()   # one head: every migration chained
    assert _tables(db_url) == TABLES | WATCH_TABLES
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
    assert migrate.current(db_url) == "0001" and _tables(db_url) == TABLES_0001
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() and _tables(db_url) == TABLES | WATCH_TABLES


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


def test_upgrade_keeps_older_statistics_but_never_reads_them(db_url, tmp_path):
    """0006_stats_content_key on a store that holds statistics: the rows stay, with no content key, so the audit
    computes them again instead of trusting statistics whose producer (checkpoint, index, model_args) is unknown."""
    from _storage_testlib import PROBE_SHA, STATS_KEY, make_config, make_stats, seed_probe
    from storage.repository import AuditStore

    def open_store():
        st = AuditStore(db_url, tmp_path / "art")
        st.sync_registry(make_config())
        return st

    migrate.upgrade(db_url)
    st = open_store()
    st.upsert_model_version("m", "1", "builtin:efficientnet_lite0", "a" * 64)
    seed_probe(st)
    stats, values = make_stats("cat")
    st.save_stats("m", "1", "cat", PROBE_SHA, stats, values, content_key=STATS_KEY)
    assert st.load_stats("m", "1", "cat", PROBE_SHA, STATS_KEY)[0] == stats
    assert st.load_stats("m", "1", "cat", PROBE_SHA, "6" * 64) is None        # made by something else: stale
    st.close()

    migrate.downgrade(db_url, "0005_indexes")          # the store as an older release left it
    assert "content_key" not in {c["name"] for c in _columns(db_url, "activation_stats")}
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() == "0006_stats_content_key"
    st = open_store()
    assert st.counts()["activation_stats"] == 1                                # kept ...
    assert st.load_stats("m", "1", "cat", PROBE_SHA, STATS_KEY) is None        # ... and never read back
    st.save_stats("m", "1", "cat", PROBE_SHA, stats, values, content_key=STATS_KEY)   # recomputed: replaces the row
    assert st.counts()["activation_stats"] == 1 and st.load_stats("m", "1", "cat", PROBE_SHA, STATS_KEY)[0] == stats
    st.close()


def _columns(url, table):
    eng = make_engine(url)
    try:
        return inspect(eng).get_columns(table)
    finally:
        eng.dispose()
