"""`neuron-audit listen`: the process that receives MLflow registry webhooks (flows/registry_hooks.py) and runs
what they trigger. An HTTP server on `registry_webhooks.host:port` answers each delivery at once; one worker
thread runs the audits, each the `nightly-audit` Prefect flow for the version's model (`run_audit(config,
model)`: the new version audited and compared with its predecessor and the champion, every version audited
before recognised unchanged and skipped; the flow tags the registered version with its verdict), under the
store's writer lock, so that a nightly run and a webhook never write at once.

Why a flow run of its own rather than a run of the `serve` deployment: the deployment's runs are executed by
the process serving it (or a work pool's workers), which polls for them; a run started here begins at once, is
shown in the same Prefect UI under the same flow name, and needs no serving process. Prefect is the one in
PREFECT_API_URL, else a server started on 127.0.0.1 (as `serve` does)."""
from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from audit.errors import AuditInputError

from .registry_hooks import RegistryReceiver

log = logging.getLogger("neuron_audit.webhooks")

# What one audit started by a webhook can fail with and leave the receiver serving the next delivery: bad
# input found by the preflight (AuditInputError is a ValueError), a store held too long (StoreBusyError is a
# RuntimeError), MLflow or the database unreachable, I/O.
LISTEN_FAULTS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, LookupError)


def webhook_secret(cfg, environ=None) -> str:
    """The HMAC secret from the environment variable `registry_webhooks.secret_env` names (bad input when unset)."""
    env = os.environ if environ is None else environ
    name = cfg.registry_webhooks.secret_env
    secret = env.get(name, "")
    if not secret.strip():
        raise AuditInputError(f"registry_webhooks.secret_env: the environment variable {name!r} is not set; set it "
                              "to the secret the MLflow webhook was created with (docs/gate.md)")
    if not any(m.mlflow_registered_model for m in cfg.models):
        raise AuditInputError("models[].mlflow_registered_model: no model names a registered model, so no webhook "
                              "could ever be acted on")
    return secret


def version_verdict(config_path: str, model: str, version: str) -> str:
    """The version's verdict as its tags say it (the worst over its comparisons; `none` without one)."""
    from storage.mlflow_content import TAG, version_tags

    from . import runtime

    return version_tags(runtime.store(config_path).mlflow_version_content(model, version))[f"{TAG}.verdict"]


def audit_version(config_path: str) -> Callable[[str, str], None]:
    """audit(model, version): the nightly flow for the version's model, under the writer lock. The whole model,
    not the version alone: the versions it is compared with must be audited too (the first time), and every
    version audited before is recognised unchanged by its fingerprint and skipped."""
    def audit(model: str, version: str) -> None:
        from . import runtime
        from .audit_flow import run_audit
        from .runlock import exclusive_store

        cfg = runtime.config(config_path)
        with exclusive_store(cfg.store.database, "listen", notify=lambda m: log.info("waiting: %s", m)):
            summary = run_audit(config_path, model=model)
        if not any(str(v.get("version")) == str(version) for v in summary.get("versions", [])):
            raise LookupError(f"version {version} of {model} is not among the registry's versions the audit saw")
    return audit


def alias_holders(cfg) -> dict[tuple[str, str], str]:
    """{(registered name, alias): version} as the registry has them now (what a revert may go back to)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.store.mlflow_tracking_uri, registry_uri=cfg.store.mlflow_tracking_uri)
    out = {}
    for m in cfg.models:
        if not m.mlflow_registered_model:
            continue
        try:
            rm = client.get_registered_model(m.mlflow_registered_model)
        except (MlflowException, OSError) as exc:
            log.warning("aliases of %s cannot be read (%s): a FAILed alias cannot be moved back until it moves again",
                        m.mlflow_registered_model, exc)
            continue
        for alias, version in (rm.aliases or {}).items():
            out[(m.mlflow_registered_model, alias)] = str(version)
    return out


def build_receiver(config_path: str, secret: str) -> RegistryReceiver:
    from mlflow.tracking import MlflowClient

    from . import runtime
    from .alerts import post_json

    cfg = runtime.config(config_path)

    def alert(text: str, payload: dict) -> None:
        if cfg.alerts.webhook:
            ok, err = post_json(cfg.alerts.webhook, payload, timeout_s=cfg.alerts.timeout_s)
            if not ok:
                log.error("the alert was not delivered to alerts.webhook: %s", err)

    def move_alias(name: str, alias: str, version: str) -> None:
        MlflowClient(tracking_uri=cfg.store.mlflow_tracking_uri,
                     registry_uri=cfg.store.mlflow_tracking_uri).set_registered_model_alias(name, alias, version)

    return RegistryReceiver(cfg, secret, audit_version(config_path),
                            lambda model, version: version_verdict(config_path, model, version), alert, move_alias,
                            alias_holders(cfg), audit_faults=LISTEN_FAULTS)


def http_server(receiver: RegistryReceiver, host: str, port: int) -> ThreadingHTTPServer:
    """The receiver behind an HTTP server (not started): POST any path delivers; GET /healthz answers 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20))
            status, message = receiver.handle(self.headers, body)
            self._answer(status, {"status": message})

        def do_GET(self):  # noqa: N802
            self._answer(200 if self.path.rstrip("/") == "/healthz" else 404, {"status": "ok"})

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            return

    return ThreadingHTTPServer((host, port), Handler)


class Listener:
    """The receiver, its worker and its HTTP server, started in background threads (tests, the command)."""

    def __init__(self, config_path: str, secret: str, host: str, port: int):
        self.receiver = build_receiver(config_path, secret).start()
        self.server = http_server(self.receiver, host, port)
        self.url = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="neuron-audit-listen", daemon=True)

    def __enter__(self) -> "Listener":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.receiver.stop()


def log_to_stderr() -> None:
    """The receiver's log lines (every delivery, accepted or not; every verdict and alert) on stderr, unless a
    handler is configured already."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def prefect_home(cfg) -> Path:
    return cfg.resolve_path(".neuron-audit")
