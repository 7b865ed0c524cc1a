"""Which Prefect API an audit talks to, and the cheapest way to have one.

`PREFECT_API_URL` set (a Prefect server or Cloud): that one. Otherwise Prefect would start its
temporary server (8-17 s on 2 cores) when the flow begins; instead `TemporaryApi.start()` launches
the same server process (Prefect's ephemeral app, UI off) as soon as the CLI knows there is work,
so that it boots while this process imports Prefect and loads models, and `use()` points Prefect
at it. When every version is unchanged no server is started at all (see flows.unchanged). The
server is stopped when the command ends, also on SIGTERM (flows.termination).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from .termination import on_forced_exit, remove_forced_exit


def configured_api_url() -> str | None:
    return os.environ.get("PREFECT_API_URL") or None


def _healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryApi:
    """A Prefect API server process on 127.0.0.1 for the length of one command."""

    def __init__(self, proc: subprocess.Popen, url: str, log):
        self.proc, self.url, self.log = proc, url, log
        on_forced_exit(self.stop)

    @classmethod
    def start(cls) -> "TemporaryApi":
        import importlib.util

        port = _free_port()
        spec = importlib.util.find_spec("prefect")
        app_dir = os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else None
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        args = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        if app_dir:
            args[3:3] = ["--app-dir", app_dir]
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        return cls(proc, f"http://127.0.0.1:{port}/api", log)

    def wait(self, timeout_s: float = 600.0) -> str:
        """The API URL once the server answers; RuntimeError (exit 4) when it exits or does not start.
        While its process is alive it is still booting (a minute or more on a loaded 2-core machine), so
        `timeout_s` only bounds a server that hangs without exiting. A logged stage: how long the command
        waited for its server."""
        from .logs import get_logger, stage

        with stage("Prefect server", f"{self.url} (temporary)", get_logger("prefect")):
            return self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"the temporary Prefect server exited with code {self.proc.returncode}: "
                                   + " | ".join(err))
            if _healthy(self.url, timeout_s=1.0):
                return self.url
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s "
                           "(set PREFECT_API_URL to a running server)")

    def stop(self) -> None:
        remove_forced_exit(self.stop)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextmanager
def prefect_api(started: TemporaryApi | None = None) -> Iterator[str | None]:
    """Run the block against PREFECT_API_URL when set, else against a temporary server (started here
    unless `started` is given); yields the API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = configured_api_url() or PREFECT_API_URL.value()      # the environment, a profile or a test harness
    if url:
        if started is not None:
            started.stop()
        yield url
        return
    api = started or TemporaryApi.start()
    try:
        url = api.wait()
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        api.stop()
