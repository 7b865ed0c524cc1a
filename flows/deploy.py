"""`neuron-audit serve`: the nightly deployment. A schedule needs a real Prefect
server, so serve reaches the one in PREFECT_API_URL or starts one on 127.0.0.1."""
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


def build_deployment(config_path: str):
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
    )


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
