"""Webhook alerts for new FAIL verdicts: one JSON POST per new FAIL (a Slack-compatible
`text` plus the structured verdict and links), delivery recorded and retried.

A webhook that times out or refuses connections is given up for the rest of the run after its
first failed delivery (`WebhookBreaker`): a hanging receiver costs one delivery's retries per run,
not one per alert. Undelivered alerts stay open and the next run retries them."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def alert_payload(model: str, baseline: str, candidate: str, neuron: dict, links: dict) -> dict:
    text = (f":rotating_light: neuron-audit FAIL — {model} {baseline} → {candidate}: "
            f"neuron `{neuron['id']}` ({neuron['kind']} {neuron['layer']}[{neuron['index']}]) — {neuron['reason']}")
    return {"text": text, "model": model, "baseline": baseline, "candidate": candidate,
            "neuron": neuron, "links": links}


_unreachable: dict[str, str] = {}


class WebhookBreaker:
    """Remembers, for one run, the webhooks that could not be reached (timeout, connection refused)."""

    def __enter__(self) -> "WebhookBreaker":
        _unreachable.clear()
        return self

    def __exit__(self, *exc) -> None:
        _unreachable.clear()


def post_json(url: str, payload: dict, attempts: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0) -> tuple[bool, str | None]:
    """POST with retries and exponential backoff; returns (delivered, last error). A URL that could not be
    reached earlier in this run (see WebhookBreaker) fails at once."""
    if url in _unreachable:
        return False, f"not attempted: the webhook was unreachable earlier in this run ({_unreachable[url]})"
    data = json.dumps(payload).encode()
    error = None
    unreachable = False
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                if 200 <= resp.status < 300:
                    return True, None
                error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            error, unreachable = f"HTTP {exc.code}", False
        except (urllib.error.URLError, OSError) as exc:
            error, unreachable = f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}", True
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2 ** attempt)
    if unreachable:
        _unreachable[url] = error or "unreachable"
    return False, error
