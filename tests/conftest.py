"""Fixtures shared by every test folder. Each subsystem's folder has its own conftest.py."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Telemetry off and no hub access, before anything imports prefect/mlflow/timm.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker, and every CLI process it
# starts, gets its share of the cores: two workers with two torch threads each would make both cores' threads
# wait on each other (torch's threads spin), which is far slower than one thread each.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // max(1, _WORKERS)))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)

import pytest
import torch

from system_services import as_postgres, find_initdb, service_missing

torch.set_num_threads(_THREADS)


PREFECT_BOOT_CAP_S = 900


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (`prefect_test_harness`), its API URL exported so that
    CLI subprocesses use it too. One only: nested harnesses leave Prefect's process-wide events worker
    sending to the outer server, and task runs then never reach the server the tests read."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # Prefect counts only its own sleeps towards this bound, and its server boots in a minute or more on a
    # loaded 2-core machine: the bound is there for a server that never answers, not to time the boot.
    with prefect_test_harness(server_startup_timeout=PREFECT_BOOT_CAP_S):
        url = PREFECT_API_URL.value()
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def lite0():
    """The built-in EfficientNet-Lite0 (ImageNet weights from the PyPI package), eval mode."""
    from sources import load_model

    return load_model("efficientnet_lite0", "builtin:efficientnet_lite0")


@pytest.fixture(scope="session")
def sample_images():
    """name -> RGB PIL image of the built-in sample photographs."""
    from audit.assets import builtin_sample_names, load_rgb_images, resolve_images

    out = {}
    for name in builtin_sample_names():
        out[name] = load_rgb_images(resolve_images(f"builtin:samples/{name}")).images[0]
    return out


@pytest.fixture(scope="session")
def pg_server():
    """Base URL (`postgresql+psycopg://postgres@127.0.0.1:PORT`) of one throwaway PostgreSQL server for the
    whole test run (fsync off). Missing PostgreSQL skips, or fails when CI=true (tests/system_services.py)."""
    from pathlib import Path

    initdb = find_initdb()
    if initdb is None:
        service_missing("PostgreSQL is not installed (no initdb)")
    bindir = str(Path(initdb).parent)
    d = tempfile.mkdtemp(prefix="neuron-audit-pg-")
    os.chmod(d, 0o755)
    if os.geteuid() == 0:
        shutil.chown(d, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = as_postgres(f"{bindir}/initdb -D {d}/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8")
    if r.returncode != 0:
        service_missing(f"PostgreSQL's initdb failed: {r.stderr.strip()[-400:]}")
    r = as_postgres(f"{bindir}/pg_ctl -D {d}/data -l {d}/log -o '-c listen_addresses=127.0.0.1 -p {port} -k {d} "
                    f"-c fsync=off -c max_connections=50' -w -t 300 start")
    if r.returncode != 0:
        service_missing(f"PostgreSQL did not start: {r.stderr.strip()[-400:]} {Path(d, 'log').read_text()[-400:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        as_postgres(f"{bindir}/pg_ctl -D {d}/data -m fast -w stop")
        shutil.rmtree(d, ignore_errors=True)


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.calls += 1
        if srv.mode == "hang":
            time.sleep(srv.hang_s)
            return
        if srv.mode == "500" or srv.calls <= srv.fail_first:
            self.send_response(500 if srv.mode == "500" else 503)
            self.end_headers()
            return
        srv.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """A real HTTP server on 127.0.0.1: mode 'ok' records the JSON it receives, '500' answers 500, 'hang'
    accepts and never answers (for hang_s seconds); `fail_first` makes its first N answers 503."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    srv.received, srv.calls, srv.mode, srv.hang_s, srv.fail_first = [], 0, "ok", 30.0, 0
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    yield srv
    srv.shutdown()
