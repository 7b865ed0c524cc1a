"""Audit on registration against a real `mlflow server` (SQLite backend) that delivers its registry webhooks to
`neuron-audit listen`'s receiver on 127.0.0.1: a version registered with mlflow.pytorch.log_model is audited once
and tagged with its verdict; a bad signature, an unknown registered model and a replayed delivery only log; the
champion alias moved onto the FAILed version is alerted and (as the config allows) moved back."""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from tests.gate.conftest import NEURONS, PLANTED, TINY, free_port
from tests.storage._registry_testlib import ARCH, log_registered, tiny_model

SECRET = "s3cret-for-tests"
VERDICTS = ("PASS", "WARN", "FAIL")


def _signed(body: bytes, delivery_id: str, secret: str = SECRET, timestamp: int | None = None) -> dict:
    from mlflow.webhooks.delivery import _generate_hmac_signature    # MLflow's own signer, not ours

    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, ts, body.decode())}


def _post(url: str, body: bytes, headers: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())["status"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["status"]


def _payload(name: str, version: str, entity: str = "model_version", **extra) -> bytes:
    return json.dumps({"entity": entity, "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": name, "version": version, **extra}}).encode()


def _wait(what: str, check, timeout_s: float = 600.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_parse_delivery_checks_signature_age_and_shape():
    from flows.registry_hooks import RejectedDelivery, parse_delivery

    body = _payload("m", "3")
    d = parse_delivery(_signed(body, "d1"), body, SECRET)
    assert (d.delivery_id, d.event, d.registered_name, d.version) == ("d1", "model_version.created", "m", "3")
    no_version = b'{"entity": "model_version", "action": "created", "data": {"name": "m"}}'
    cases = [(body, _signed(body, "d2", secret="other"), 401, "signature does not match"),
             (body, _signed(body, "d3", timestamp=int(time.time()) - 3600), 401, "replay"),
             (body, {"X-MLflow-Delivery-Id": "d4"}, 401, "unsigned"),
             (b"{not json", _signed(b"{not json", "d5"), 400, "not JSON"),
             (no_version, _signed(no_version, "d6"), 400, "do not name a model version")]
    for raw, headers, status, words in cases:
        with pytest.raises(RejectedDelivery) as exc:
            parse_delivery(headers, raw, SECRET)
        assert exc.value.status == status and words in str(exc.value)


def test_listen_without_secret_is_bad_input(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    monkeypatch.delenv("NEURON_AUDIT_WEBHOOK_SECRET", raising=False)
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump({"store": {"database": "sqlite:///./store/audit.db",
                                              "mlflow_tracking_uri": "sqlite:///./store/mlflow.db"},
                                    "models": [{"name": "t", "architecture": ARCH, "mlflow_registered_model": "t",
                                                "neurons": NEURONS[2:]}]}))
    with pytest.raises(SystemExit) as exc:
        main(["listen", "-c", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "registry_webhooks.secret_env" in err and "NEURON_AUDIT_WEBHOOK_SECRET" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_registered_version_is_audited_once_and_tagged(tmp_path, webhook_mlflow_server, webhook):
    from mlflow.tracking import MlflowClient

    from flows.listen import Listener
    from flows.registry_hooks import RejectedDelivery, parse_delivery

    # the receiver's log, read from a handler on its own logger (Prefect reconfigures the root logger's handlers
    # when a flow starts, so pytest's caplog misses what is logged after that)
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    receiver_log = logging.getLogger("neuron_audit.webhooks")
    receiver_log.addHandler(handler)
    receiver_log.setLevel(logging.INFO)
    text = lambda: "\n".join(records)  # noqa: E731
    url = webhook_mlflow_server
    name = f"gate-e2e-{uuid.uuid4().hex[:6]}"
    training = tmp_path / "training"
    log_registered(url, training, name, tiny_model(3), alias="champion")
    cfg = {"store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": url,
                     "artifacts": "./store/artifacts"},
           "alerts": {"webhook": webhook.url},
           "ui": {"dashboard": "http://dashboard.test:8050"},
           "registry_webhooks": {"port": free_port(), "revert_failed_alias": True},
           "models": [{"name": "tiny", "architecture": ARCH, "mlflow_registered_model": name, "champion": "1",
                       **TINY, "neurons": NEURONS}]}
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    client = MlflowClient(url)

    with Listener(str(path), SECRET, "127.0.0.1", cfg["registry_webhooks"]["port"]) as listener:
        receiver = listener.receiver
        deliveries: list[tuple[dict, bytes]] = []
        handle = receiver.handle

        def recording(headers, body):
            answer = handle(headers, body)
            deliveries.append((dict(headers.items()), body))       # once handled: a replay comes after it
            return answer

        receiver.handle = recording
        events = ["model_version.created", "model_version_alias.created"]
        client.create_webhook(name="neuron-audit", url=listener.url, events=events, secret=SECRET)
        client.create_webhook(name="wrong-secret", url=listener.url, events=events[:1], secret="not-the-secret")

        t0 = time.monotonic()
        v2 = log_registered(url, training, name, tiny_model(3, negate_row=PLANTED))

        def verified(headers, body) -> bool:
            try:
                return parse_delivery(headers, body, SECRET).version == v2
            except RejectedDelivery:
                return False

        # while its audit is queued or running: the same delivery again (as MLflow retries it), and the same
        # version under a new delivery id, change nothing
        signed = _wait("MLflow's delivery for v2", lambda: next(((h, b) for h, b in list(deliveries)
                                                                 if verified(h, b)), None), 300)
        assert _post(listener.url, signed[1], signed[0]) == (200, "duplicate delivery")
        again = _payload(name, v2)
        assert _post(listener.url, again, _signed(again, "fresh-id")) == (200, "nothing to do")
        junk = b"{not json"
        assert _post(listener.url, junk, _signed(junk, "junk-id"))[0] == 400

        tags = _wait("the verdict tags on v2",
                     lambda: (t := client.get_model_version(name, v2).tags).get("neuron_audit.verdict") in VERDICTS and t)
        elapsed = time.monotonic() - t0
        assert tags["neuron_audit.verdict"] == "FAIL" and tags["neuron_audit.failed_neurons"] == "planted"
        assert tags["neuron_audit.fail_count"] == "1" and tags["neuron_audit.pass_count"] == "2"
        assert tags["neuron_audit.dashboard_url"] == f"http://dashboard.test:8050/models/tiny/compare/1/{v2}"
        assert tags["neuron_audit.mlflow_run_url"].startswith(f"{url}/#/experiments/")
        assert tags["neuron_audit.mlflow_run_url"].endswith(tags["neuron_audit.mlflow_run_id"])
        _wait("the worker's record", lambda: receiver.done)
        print(f"registration to verdict tags: {elapsed:.1f} s")
        assert "not audited again" in text() and "delivery already received" in text()
        assert "the signature does not match" in text()      # MLflow's own delivery with the wrong secret

        # a registered model no config entry names
        log_registered(url, training, f"stranger-{uuid.uuid4().hex[:6]}", tiny_model(1))
        _wait("the unknown model's delivery", lambda: "is not in the config" in text(), 120)

        # the champion alias moved onto the FAILed version: alerted, moved back to the version before
        client.set_registered_model_alias(name, "champion", v2)
        alert = _wait("the alias alert", lambda: next((p for p in webhook.received
                                                        if p.get("kind") == "alias-on-failed-version"), None), 300)
        assert alert["version"] == v2 and alert["moved_back_to"] == "1"
        assert _wait("the alias moved back", lambda: str(client.get_registered_model(name).aliases.get("champion"))
                     == "1", 120)

        audited = [e for e in receiver.done if e["version"] == v2 and e["audited"]]
        assert len(audited) == 1, receiver.done
        assert [e["version"] for e in receiver.done if e["audited"]] == [v2]
