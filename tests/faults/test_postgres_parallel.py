"""On PostgreSQL two audits of one store run in parallel (no store lock) and duplicate nothing:
unique keys with INSERT ... ON CONFLICT, and a row lock per neuron for alerts."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import TABLES, tiny_config_dict, write_config
from tests.faults.test_faults import run_two_at_once
from system_services import drop_pg_database as _drop_pg_database, new_pg_database as _new_pg_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _pg_state(url: str) -> dict:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            counts = {t: conn.execute(text(f"select count(*) from {t}")).scalar() for t in TABLES}
            verdicts = dict(conn.execute(text(
                "select n.neuron_id || ':' || b.version || '->' || c.version, d.verdict from drift_results d "
                "join neurons n on n.id = d.neuron_id join model_versions b on b.id = d.baseline_version_id "
                "join model_versions c on c.id = d.candidate_version_id")).all())
            statuses = [s for (s,) in conn.execute(text("select status from audit_runs order by id"))]
    finally:
        engine.dispose()
    return {"counts": counts, "verdicts": verdicts, "statuses": statuses}


def test_two_parallel_runs_on_postgresql_duplicate_nothing(tmp_path, swapped_checkpoint, pg_server, reference):
    url, name = _new_pg_database(pg_server)
    try:
        data = tiny_config_dict()
        data["store"]["database"] = url
        # MLflow 3 refuses file stores; a SQLite store made once here, so that the two runs share its schema
        mlflow_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
        (tmp_path / "mlflow").mkdir()
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=mlflow_uri).search_experiments()
        data["store"]["mlflow_tracking_uri"] = mlflow_uri
        cfg = write_config(tmp_path, swapped_checkpoint, data)
        a, b, _, err_a, err_b = run_two_at_once(cfg)
        assert (a.returncode, b.returncode) == (reference["code"], reference["code"]), (err_a[-1500:], err_b[-1500:])
        assert "waiting:" not in err_a + err_b            # no store lock on PostgreSQL: they ran side by side
        state = _pg_state(url)
        assert state["statuses"] == ["completed", "completed"]
        assert state["verdicts"] == reference["state"]["verdicts"]
        assert state["counts"] == reference["state"]["counts"]
    finally:
        _drop_pg_database(pg_server, name)
