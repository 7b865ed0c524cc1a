"""`neuron-audit serve`: the nightly deployment `nightly-audit/nightly` with the config's cron schedule.

Two ways to run it, both Prefect's own:
- `serve_nightly`: this process serves the deployment and runs each scheduled flow run itself (it blocks). A
  schedule needs a real Prefect server, so it reaches the one in PREFECT_API_URL or starts one on 127.0.0.1.
- `deploy_to_work_pool`: the deployment is registered on a work pool of the server in PREFECT_API_URL and the
  command returns; `prefect worker start --pool NAME` on any machine with neuron-audit installed runs the
  scheduled flow runs (the entrypoint is the module path `flows.audit_flow.nightly_audit`)."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

DEPLOYMENT_NAME = "nightly"


def api_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


def ensure_prefect_server(host: str = "127.0.0.1", port: int = 4200, home: Path | None = None,
                          wait_s: float = 90.0) -> tuple[str, subprocess.Popen | None]:
    """The API URL of a healthy Prefect server, starting one when none answers."""
    api = os.environ.get("PREFECT_API_URL") or f"http://{host}:{port}/api"
    if api_healthy(api):
        return api, None
    env = dict(os.environ)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)
    log = subprocess.DEVNULL
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "prefect-server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {proc.returncode} while starting on {host}:{port}")
        if api_healthy(api):
            return api, proc
        time.sleep(1.0)
    proc.terminate()
    raise RuntimeError(f"Prefect server on {host}:{port} did not become healthy within {wait_s:.0f} s")


HEAVY_TAG = "neuron-audit-heavy"


def ensure_heavy_concurrency_limit(config_path: str) -> int:
    """Tasks tagged neuron-audit-heavy (statistics, rendering, compares) run at most one per
    worker: 1 in-process, the Dask worker count when scaled out."""
    from prefect.client.orchestration import get_client

    from audit.config import load_config

    cfg = load_config(config_path)
    limit = cfg.executor.dask.n_workers if cfg.executor.dask else 1
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=HEAVY_TAG, concurrency_limit=limit)
    return limit


def build_deployment(config_path: str, module_entrypoint: bool = False):
    """The nightly deployment of the flow for this config (its absolute path is the flow's parameter).
    module_entrypoint: refer to the flow by module path (for workers, which import the installed package)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from audit.config import load_config

    from .audit_flow import nightly_audit

    cfg = load_config(config_path)
    return nightly_audit.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)],
        parameters={"config_path": str(Path(config_path).resolve())},
        description="neuron-audit: nightly audit of the registered neurons",
        tags=["neuron-audit"],
        entrypoint_type=EntrypointType.MODULE_PATH if module_entrypoint else EntrypointType.FILE_PATH,
    )


def deploy_to_work_pool(config_path: str, work_pool: str) -> str:
    """Register the nightly deployment on `work_pool` of the Prefect server in PREFECT_API_URL (created on that
    server beforehand, e.g. `prefect work-pool create NAME --type process`); returns the deployment id. The
    pool's workers run the scheduled flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from audit.errors import AuditInputError

    api = PREFECT_API_URL.value()
    if not api or not api_healthy(api):
        raise AuditInputError(f"serve --work-pool {work_pool}: set PREFECT_API_URL to the Prefect server the pool's "
                              f"workers poll (now {api or 'unset'}{'' if not api else ', not answering'})")
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            raise AuditInputError(f"serve --work-pool: work pool {work_pool!r} does not exist on {api}; create it "
                                  f"with `prefect work-pool create {work_pool} --type process`") from None
    ensure_heavy_concurrency_limit(config_path)
    return str(build_deployment(config_path, module_entrypoint=True).apply(work_pool_name=work_pool))


def serve_nightly(config_path: str, host: str = "127.0.0.1", port: int = 4200, home: Path | None = None) -> None:
    api, proc = ensure_prefect_server(host, port, home)
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api}):
            ensure_heavy_concurrency_limit(config_path)
            serve(build_deployment(config_path))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
