"""Webhook alerts for new FAIL verdicts: one JSON POST per new FAIL (a Slack-compatible
`text` plus the structured verdict and links), delivery recorded and retried."""
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


def post_json(url: str, payload: dict, attempts: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0) -> tuple[bool, str | None]:
    """POST with retries and exponential backoff; returns (delivered, last error)."""
    data = json.dumps(payload).encode()
    error = None
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                if 200 <= resp.status < 300:
                    return True, None
                error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}"
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2 ** attempt)
    return False, error
