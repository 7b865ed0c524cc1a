"""The nightly deployment on a Prefect work pool (against the test harness's real Prefect server), and what
`serve --help` tells a user."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_deploy_to_work_pool_registers_scheduled_module_deployment(tiny_config):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from audit.errors import AuditInputError
    from flows.deploy import deploy_to_work_pool

    with pytest.raises(AuditInputError, match="work pool 'no-such-pool' does not exist.*prefect work-pool create"):
        deploy_to_work_pool(str(tiny_config), "no-such-pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="audit-pool", type="process"), overwrite=True)
    deployment_id = deploy_to_work_pool(str(tiny_config), "audit-pool")
    with get_client(sync_client=True) as client:
        d = client.read_deployment(deployment_id)
    assert d.name == "nightly" and d.work_pool_name == "audit-pool"
    assert d.entrypoint == "flows.audit_flow.nightly_audit"           # workers import the installed package
    assert d.parameters == {"config_path": str(tiny_config.resolve())}
    assert d.schedules[0].schedule.cron == "0 2 * * *" and d.schedules[0].schedule.timezone == "UTC"


def test_serve_help_explains_deployment_schedule_and_work_pool():
    from typer.testing import CliRunner

    from flows.cli import app

    text = " ".join(CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output.split())
    for needed in ("nightly-audit/nightly", "schedule", "cron", "blocks until Ctrl-C", "PREFECT_API_URL",
                   "prefect work-pool create", "--work-pool", "prefect worker start --pool"):
        assert needed in text, needed
