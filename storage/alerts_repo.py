"""The alerts aggregate of the audit store (`AlertRepository`, mixed into `AuditStore`).

An alert is raised for a drift result with verdict FAIL on a delivery channel (e.g. 'webhook'): at most
one open alert per neuron, (baseline, candidate) pair and channel; a neuron that fails again after
recovering reopens its alert. Each delivery attempt is recorded ('pending', 'sent', 'failed'), so the
next run delivers what is still undelivered. A non-FAIL drift result resolves its open alerts
(`ResultRepository.save_drift`). The methods need the store's plumbing (`self._write`, `self._insert`)
and the alert reads of `DashboardQueries` (`self._alerts`).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import schema as S
from .errors import NotFoundError
from .timestamps import now_utc as _now


class AlertRepository:
    """Alerts of failed drift results: creation (deduplicated), delivery bookkeeping, resolution, payloads."""

    def create_alert_if_new(self, drift_result_id: int, channel: str) -> int | None:
        """A new alert for a drift result, or None when an open alert (resolved_at NULL) already exists on this
        channel for the same neuron and (baseline, candidate) pair. A resolved alert of the same drift result and
        channel (the neuron recovered, then failed again) is reopened (delivery 'pending') and its id returned."""
        def tx(s: Session) -> int | None:
            dr = s.get(S.DriftResultRow, drift_result_id)
            if dr is None:
                raise NotFoundError(f"drift result {drift_result_id} does not exist")
            # serialize alert creation per neuron (PostgreSQL; SQLite writers are serialized already)
            s.execute(select(S.Neuron.id).where(S.Neuron.id == dr.neuron_id).with_for_update())
            D = S.DriftResultRow
            open_id = s.execute(
                select(S.Alert.id).join(D, D.id == S.Alert.drift_result_id)
                .where(D.neuron_id == dr.neuron_id, D.baseline_version_id == dr.baseline_version_id,
                       D.candidate_version_id == dr.candidate_version_id, S.Alert.channel == channel,
                       S.Alert.resolved_at.is_(None))).first()
            if open_id is not None:
                return None
            resolved = s.execute(select(S.Alert.id).where(S.Alert.drift_result_id == drift_result_id,
                                                          S.Alert.channel == channel)).scalar_one_or_none()
            if resolved is not None:   # the neuron failed again after recovering: reopen the alert
                s.execute(update(S.Alert).where(S.Alert.id == resolved).values(
                    resolved_at=None, created_at=_now(), delivery_status="pending", sent_at=None, attempts=0,
                    last_error=None))
                return resolved
            stmt = (self._insert(s, S.Alert.__table__)
                    .values(drift_result_id=drift_result_id, channel=channel, created_at=_now(), delivery_status="pending",
                            attempts=0, resolved_at=None)
                    .on_conflict_do_nothing(index_elements=["drift_result_id", "channel"]))
            return s.execute(stmt.returning(S.Alert.__table__.c.id)).scalar_one_or_none()
        return self._write(tx)

    def mark_alert(self, alert_id: int, delivered: bool, error: str | None = None) -> None:
        """Record a delivery attempt: 'sent' (sent_at set) or 'failed' (last_error kept)."""
        def tx(s: Session) -> None:
            values: dict[str, Any] = {"attempts": S.Alert.attempts + 1}
            if delivered:
                values.update(delivery_status="sent", sent_at=_now(), last_error=None)
            else:
                values.update(delivery_status="failed", last_error=(error or "delivery failed")[:5000])
            if not s.execute(update(S.Alert).where(S.Alert.id == alert_id).values(**values)).rowcount:
                raise NotFoundError(f"alert {alert_id} does not exist")
        self._write(tx)

    def resolve_alert(self, alert_id: int) -> None:
        self._write(lambda s: s.execute(update(S.Alert).where(S.Alert.id == alert_id, S.Alert.resolved_at.is_(None))
                                        .values(resolved_at=_now())))

    def alert_payload(self, alert_id: int) -> dict:
        """What a webhook receives for an alert: model, neuron, versions, verdict, statistics, reason."""
        for a in self._alerts(only_open=False, alert_id=alert_id):
            return a
        raise NotFoundError(f"alert {alert_id} does not exist")

    def undelivered_alerts(self, channel: str = "webhook") -> list[dict]:
        """Open alerts on `channel` whose delivery is 'pending' or 'failed', oldest first, each with `payload`
        (the JSON a webhook receives: text, model, baseline, candidate, neuron{...}, links)."""
        out = []
        for a in reversed(self._alerts(only_open=True)):
            if a["channel"] != channel or a["delivery_status"] == "sent":
                continue
            neuron = {"id": a["neuron_id"], "kind": a["kind"], "layer": a["layer"], "index": a["index"],
                      "label": a["label"], "verdict": a["verdict"], "statistics": a["statistics"],
                      "matched_index": a["matched_index"], "reason": a["reason"]}
            text = (f":rotating_light: neuron-audit FAIL — {a['model']} {a['baseline']} → {a['candidate']}: "
                    f"neuron `{a['neuron_id']}` ({a['kind']} {a['layer']}[{a['index']}]) — {a['reason']}")
            a["payload"] = {"text": text, "model": a["model"], "baseline": a["baseline"], "candidate": a["candidate"],
                            "neuron": neuron, "links": {}, "alert_id": a["id"], "attempts": a["attempts"]}
            out.append(a)
        return out
