"""MLflow registry webhooks received by `neuron-audit listen` (docs/gate.md): a new registered version is audited
against its predecessor and the champion and tagged with its verdict; the guarded alias (`champion`) landing on a
FAILed version is alerted loudly, and moved back only when the config allows it.

A delivery is answered at once; the work goes to one worker thread, one audit at a time (the store has one
writer). What is checked, in order, each failure logged and answered without any work:
- the signature: MLflow signs `<delivery id>.<timestamp>.<body>` with HMAC-SHA256 of the webhook's secret
  (`X-MLflow-Signature: v1,<base64>`); a timestamp more than 5 minutes away from now is a replay (401);
- the payload: JSON with `entity`, `action` and a `data` mapping holding `name` and `version` (400);
- the delivery id (`X-MLflow-Delivery-Id`): a retried delivery seen within `dedupe_seconds` is ignored (200);
- the registered name: one some `models[].mlflow_registered_model` names, else ignored (200);
- the version: one already queued, running or audited by this receiver is not audited again (200); across
  restarts the audit itself recognises an unchanged version by its fingerprint and recomputes nothing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("neuron_audit.webhooks")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_CLOCK_SKEW_S = 300
VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"


class RejectedDelivery(ValueError):
    """A delivery that is not acted on: its HTTP status and why (logged)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    event: str                    # "model_version.created", "model_version_alias.created", ...
    registered_name: str
    version: str
    alias: str | None = None


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature header value of a delivery (mlflow/webhooks/delivery.py's scheme)."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def parse_delivery(headers, body: bytes, secret: str, now: float | None = None) -> Delivery:
    """The verified delivery, or RejectedDelivery (401: unsigned, bad signature or stale; 400: malformed)."""
    delivery_id, timestamp = headers.get(DELIVERY_HEADER) or "", headers.get(TIMESTAMP_HEADER) or ""
    given = headers.get(SIGNATURE_HEADER) or ""
    if not (delivery_id and timestamp and given):
        raise RejectedDelivery(401, f"unsigned delivery: headers {DELIVERY_HEADER}, {TIMESTAMP_HEADER} and "
                                    f"{SIGNATURE_HEADER} are required")
    if not any(hmac.compare_digest(signature(secret, delivery_id, timestamp, body), s.strip())
               for s in given.split(" ") if s.strip()):
        raise RejectedDelivery(401, f"delivery {delivery_id}: the signature does not match the secret")
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        raise RejectedDelivery(401, f"delivery {delivery_id}: {TIMESTAMP_HEADER} {timestamp!r} is not a Unix time") from None
    if age > MAX_CLOCK_SKEW_S:
        raise RejectedDelivery(401, f"delivery {delivery_id}: signed {age:.0f} s away from now (a replay?)")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectedDelivery(400, f"delivery {delivery_id}: the body is not JSON: {exc}") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or not all(isinstance(payload.get(k), str) for k in ("entity", "action")):
        raise RejectedDelivery(400, f"delivery {delivery_id}: payload keys entity, action and data are required")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, (str, int)) or not str(version).isdigit():
        raise RejectedDelivery(400, f"delivery {delivery_id}: data.name {name!r} / data.version {version!r} "
                                    "do not name a model version")
    alias = data.get("alias")
    return Delivery(delivery_id, f"{payload['entity']}.{payload['action']}", name, str(version),
                    alias if isinstance(alias, str) else None)


@dataclass(frozen=True)
class Job:
    model: str                    # the config's model name
    registered_name: str
    version: str
    guard_alias: str | None = None
    previous_holder: str | None = None


class RegistryReceiver:
    """Deliveries in (`handle`, fast), audits out (one worker thread calling `audit(model, version)`).

    `audit(model, version)` audits a version (its tags are written by the audit); `verdict(model, version)`
    reads its verdict (`FAIL`, `WARN`, `PASS`, `none`); `alert(text, payload)` announces a guarded alias on a FAILed version; `move_alias(name, alias,
    version)` sets an alias (only called when `revert_failed_alias` is true); `alias_holders` is what the
    registry says at start: {(registered name, alias): version}; `audit_faults`: what a failed audit may raise
    (logged with its traceback; the receiver goes on with the next delivery)."""

    def __init__(self, cfg, secret: str, audit: Callable[[str, str], None], verdict: Callable[[str, str], str],
                 alert: Callable[[str, dict], None], move_alias: Callable[[str, str, str], None] | None = None,
                 alias_holders: dict[tuple[str, str], str] | None = None,
                 audit_faults: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)):
        self.audit_faults = audit_faults
        self.settings = cfg.registry_webhooks
        self.secret = secret
        self.models = {m.mlflow_registered_model: m.name for m in cfg.models if m.mlflow_registered_model}
        self.audit, self.verdict, self.alert, self.move_alias = audit, verdict, alert, move_alias
        self.holders = dict(alias_holders or {})
        self.own_moves: set[tuple[str, str, str]] = set()      # aliases this receiver moved: their echo is ignored
        self.seen: dict[str, float] = {}
        self.versions: dict[tuple[str, str], str] = {}       # (model, version) -> queued | running | done | failed
        self.jobs: queue.Queue[tuple[Job, float] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.done: list[dict] = []                           # what the worker did, newest last
        self.worker = threading.Thread(target=self._work, name="neuron-audit-webhooks", daemon=True)

    def start(self) -> "RegistryReceiver":
        self.worker.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.jobs.put(None)
        self.worker.join(timeout_s)

    # ------------------------------------------------------------------ the fast part
    def handle(self, headers, body: bytes) -> tuple[int, str]:
        """(HTTP status, message) for one delivery; every outcome is logged."""
        try:
            d = parse_delivery(headers, body, self.secret)
        except RejectedDelivery as exc:
            log.warning("webhook rejected (%s): %s", exc.status, exc)
            return exc.status, str(exc)
        with self.lock:
            now = time.monotonic()
            self.seen = {k: t for k, t in self.seen.items() if now - t < self.settings.dedupe_seconds}
            if d.delivery_id in self.seen:
                log.info("webhook %s: delivery already received; ignored", d.delivery_id)
                return 200, "duplicate delivery"
            self.seen[d.delivery_id] = now
            model = self.models.get(d.registered_name)
            if model is None:
                log.warning("webhook %s: registered model %r is not in the config (models[].mlflow_registered_model); "
                            "ignored", d.delivery_id, d.registered_name)
                return 200, "unknown registered model"
            job = self._job(d, model)
            if job is None:
                return 200, "nothing to do"
            self.jobs.put((job, time.monotonic()))
            if job.guard_alias is None:
                self.versions[(model, d.version)] = "queued"
        log.info("webhook %s: %s %s v%s queued", d.delivery_id, d.event, d.registered_name, d.version)
        return 202, "queued"

    def _job(self, d: Delivery, model: str) -> Job | None:
        s = self.settings
        if d.event == VERSION_CREATED:
            if s.on_version_created != "audit":
                log.info("webhook %s: %s ignored (registry_webhooks.on_version_created: ignore)", d.delivery_id, d.event)
                return None
            state = self.versions.get((model, d.version))
            if state in ("queued", "running", "done"):
                log.info("webhook %s: %s v%s is %s; not audited again", d.delivery_id, model, d.version, state)
                return None
            return Job(model, d.registered_name, d.version)
        if d.event == ALIAS_CREATED:
            if s.on_alias_created != "guard" or d.alias != s.guarded_alias:
                log.info("webhook %s: alias %r set on %s v%s; not guarded", d.delivery_id, d.alias,
                         d.registered_name, d.version)
                return None
            if (d.registered_name, d.alias, d.version) in self.own_moves:
                self.own_moves.discard((d.registered_name, d.alias, d.version))
                log.info("webhook %s: alias %r back on %s v%s (moved by this receiver); not guarded again",
                         d.delivery_id, d.alias, d.registered_name, d.version)
                return None
            previous = self.holders.get((d.registered_name, d.alias))
            self.holders[(d.registered_name, d.alias)] = d.version
            return Job(model, d.registered_name, d.version, d.alias, previous if previous != d.version else None)
        log.info("webhook %s: event %s ignored", d.delivery_id, d.event)
        return None

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                return
            job, arrived = item
            key = (job.model, job.version)
            with self.lock:
                audited = self.versions.get(key) == "done"
                self.versions[key] = "done" if audited else "running"
            entry = {"model": job.model, "version": job.version, "audited": not audited, "alias": job.guard_alias,
                     "arrived": arrived}         # time.monotonic() at the delivery's arrival
            try:
                if not audited:
                    self.audit(job.model, job.version)
                entry["verdict"] = self.verdict(job.model, job.version)
            except self.audit_faults as exc:
                log.exception("audit of %s v%s failed: %s", job.model, job.version, exc)
                with self.lock:
                    self.versions[key] = "failed"           # a later delivery may try again
                self.done.append({**entry, "verdict": None, "error": str(exc)})
                continue
            with self.lock:
                self.versions[key] = "done"
            # from the delivery's arrival to the verdict tags on the version (the audit writes them)
            entry["seconds"] = time.monotonic() - arrived
            log.info("%s v%s: verdict %s, %.1f s after the delivery%s", job.model, job.version, entry["verdict"],
                     entry["seconds"], "" if entry["audited"] else " (audited before)")
            if job.guard_alias and entry["verdict"] == "FAIL":
                entry["alert"] = self._guard(job)
            self.done.append(entry)

    def _guard(self, job: Job) -> str:
        """The guarded alias is on a FAILed version: say so loudly; move it back only when allowed and known."""
        text = (f"neuron-audit: alias '{job.guard_alias}' of registered model '{job.registered_name}' was set on "
                f"version {job.version}, whose audit FAILed")
        moved = None
        if self.settings.revert_failed_alias:
            if job.previous_holder and self.move_alias is not None:
                with self.lock:
                    self.own_moves.add((job.registered_name, job.guard_alias, job.previous_holder))
                self.move_alias(job.registered_name, job.guard_alias, job.previous_holder)
                with self.lock:
                    self.holders[(job.registered_name, job.guard_alias)] = job.previous_holder
                moved = job.previous_holder
                log.warning("moved alias %r of %s back to version %s (registry_webhooks.revert_failed_alias)",
                            job.guard_alias, job.registered_name, moved)
                text += f"; the alias was moved back to version {moved}"
            else:
                text += "; the alias was NOT moved: its previous holder is unknown to this receiver"
        log.error("%s", text)
        self.alert(text, {"text": f":rotating_light: {text}", "kind": "alias-on-failed-version",
                          "registered_model": job.registered_name, "model": job.model, "alias": job.guard_alias,
                          "version": job.version, "moved_back_to": moved})
        return text
