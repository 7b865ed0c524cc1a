"""Production batches watched for feature drift (`neuron-audit watch`): reads and writes.

`AuditStore.batches` is a `BatchRepository` over the same engine. A batch is keyed by (model,
batch id): watching the same batch again updates its row and its neurons' rows in place, in one
transaction, so a reader never sees half a batch and nothing is duplicated. Alerts are keyed by
(batch, subject, channel): a FAIL that was already alerted is not alerted again.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import schema as S
from .artifacts import jsonable
from .errors import NotFoundError


def _row_dict(b: S.WatchBatch, version: str) -> dict:
    from .repository import _iso

    return {"pk": b.id, "batch_id": b.batch_id, "version": version, "source": b.source,
            "images_sha256": b.images_sha256, "n_images": b.n_images, "n_skipped": b.n_skipped,
            "skipped": b.skipped or {}, "reference": b.reference or {}, "verdict": b.verdict, "joint": b.joint or {},
            "summary": b.summary or {}, "neuron_ids": list(b.neuron_ids or []), "image_names": list(b.image_names or []),
            "values_path": b.values_path, "mlflow_run_id": b.mlflow_run_id, "created_at": _iso(b.created_at),
            "updated_at": _iso(b.updated_at)}


class BatchRepository:
    def __init__(self, store):
        self.store = store

    # ------------------------------------------------------------------ writes
    def save_batch(self, model: str, version: str, batch_id: str, *, source: str | None, images_sha256: str,
                   n_images: int, skipped: Mapping[str, str], reference: Mapping, verdict: str, joint: Mapping,
                   summary: Mapping, neuron_ids: list[str], image_names: list[str], values: np.ndarray,
                   results: list[Mapping]) -> int:
        """Upsert a batch and its neurons' results (dicts with neuron_id, verdict, reason, statistics,
        evidence) in one transaction; results of neurons no longer watched are removed. Returns the row id."""
        from .repository import _now

        st = self.store
        values_path = st.artifacts.put_arrays({"values": np.asarray(values, dtype=np.float32)})

        def tx(s: Session) -> int:
            now = _now()
            pk = st._upsert(s, S.WatchBatch.__table__, {
                "model_id": st._model_id(s, model), "model_version_id": st._version_id(s, model, version),
                "batch_id": str(batch_id), "source": source, "images_sha256": images_sha256, "n_images": int(n_images),
                "n_skipped": len(skipped), "skipped": jsonable(dict(skipped)), "reference": jsonable(dict(reference)),
                "verdict": verdict, "joint": jsonable(dict(joint)), "summary": jsonable(dict(summary)),
                "neuron_ids": list(neuron_ids), "image_names": list(image_names), "values_path": values_path,
                "mlflow_run_id": None, "created_at": now, "updated_at": now},
                ["model_id", "batch_id"],
                ["model_version_id", "source", "images_sha256", "n_images", "n_skipped", "skipped", "reference",
                 "verdict", "joint", "summary", "neuron_ids", "image_names", "values_path", "updated_at"])
            keep = []
            for r in results:
                npk = st._neuron_pk(s, model, r["neuron_id"])
                keep.append(npk)
                st._upsert(s, S.WatchResult.__table__, {
                    "batch_pk": pk, "neuron_id": npk, "verdict": r["verdict"], "reason": r.get("reason", ""),
                    "statistics": jsonable(dict(r.get("statistics") or {})),
                    "evidence": jsonable(dict(r.get("evidence") or {})), "created_at": now},
                    ["batch_pk", "neuron_id"], ["verdict", "reason", "statistics", "evidence", "created_at"])
            s.execute(delete(S.WatchResult).where(S.WatchResult.batch_pk == pk, S.WatchResult.neuron_id.not_in(keep)))
            return pk
        return st._write(tx)

    def set_mlflow_run(self, batch_pk: int, mlflow_run_id: str) -> None:
        self.store._write(lambda s: s.execute(update(S.WatchBatch).where(S.WatchBatch.id == batch_pk)
                                              .values(mlflow_run_id=mlflow_run_id)))

    def create_alert_if_new(self, batch_pk: int, subject: str, channel: str, payload: Mapping) -> int | None:
        """A new alert for a FAIL of `subject` (neuron id or '(joint)') on a batch; None when one exists."""
        from .repository import _now

        st = self.store

        def tx(s: Session) -> int | None:
            stmt = (st._insert(s, S.WatchAlert.__table__)
                    .values(batch_pk=batch_pk, subject=subject, channel=channel, payload=jsonable(dict(payload)),
                            created_at=_now(), delivery_status="pending", attempts=0)
                    .on_conflict_do_nothing(index_elements=["batch_pk", "subject", "channel"]))
            return s.execute(stmt.returning(S.WatchAlert.id)).scalar_one_or_none()
        return st._write(tx)

    def mark_alert(self, alert_id: int, delivered: bool, error: str | None = None) -> None:
        from .repository import _now

        def tx(s: Session) -> None:
            values: dict[str, Any] = {"attempts": S.WatchAlert.attempts + 1}
            if delivered:
                values.update(delivery_status="sent", sent_at=_now(), last_error=None)
            else:
                values.update(delivery_status="failed", last_error=(error or "delivery failed")[:5000])
            if not s.execute(update(S.WatchAlert).where(S.WatchAlert.id == alert_id).values(**values)).rowcount:
                raise NotFoundError(f"watch alert {alert_id} does not exist")
        self.store._write(tx)

    def undelivered_alerts(self, channel: str = "webhook") -> list[dict]:
        """Alerts on `channel` still 'pending' or 'failed', oldest first: dict(id, subject, payload, attempts)."""
        with self.store._read() as s:
            rows = s.execute(select(S.WatchAlert).where(S.WatchAlert.channel == channel,
                                                        S.WatchAlert.delivery_status != "sent")
                             .order_by(S.WatchAlert.created_at, S.WatchAlert.id)).scalars().all()
        return [{"id": a.id, "subject": a.subject, "payload": a.payload or {}, "attempts": a.attempts} for a in rows]

    def alerts(self, model: str, batch_id: str) -> list[dict]:
        """The alerts of one batch: dict(id, subject, channel, delivery_status, attempts, last_error)."""
        with self.store._read() as s:
            rows = s.execute(select(S.WatchAlert).join(S.WatchBatch, S.WatchBatch.id == S.WatchAlert.batch_pk)
                             .join(S.Model, S.Model.id == S.WatchBatch.model_id)
                             .where(S.Model.name == model, S.WatchBatch.batch_id == str(batch_id))
                             .order_by(S.WatchAlert.id)).scalars().all()
        return [{"id": a.id, "subject": a.subject, "channel": a.channel, "delivery_status": a.delivery_status,
                 "attempts": a.attempts, "last_error": a.last_error} for a in rows]

    # ------------------------------------------------------------------ reads
    def _batches(self, s: Session, model: str, batch_id: str | None = None):
        q = (select(S.WatchBatch, S.ModelVersion.version).join(S.Model, S.Model.id == S.WatchBatch.model_id)
             .join(S.ModelVersion, S.ModelVersion.id == S.WatchBatch.model_version_id).where(S.Model.name == model))
        if batch_id is not None:
            q = q.where(S.WatchBatch.batch_id == str(batch_id))
        return s.execute(q.order_by(S.WatchBatch.created_at, S.WatchBatch.id)).all()

    def has_batches(self, model: str) -> bool:
        """Whether any batch of the model was watched (one indexed lookup)."""
        with self.store._read() as s:
            return s.execute(select(S.WatchBatch.id).join(S.Model, S.Model.id == S.WatchBatch.model_id)
                             .where(S.Model.name == model).limit(1)).first() is not None

    def get_batch(self, model: str, batch_id: str) -> dict | None:
        """The batch row (dict) or None."""
        with self.store._read() as s:
            rows = self._batches(s, model, batch_id)
        return _row_dict(*rows[0]) if rows else None

    def list_batches(self, model: str) -> list[dict]:
        """Every batch of a model, oldest first, with its verdict counts."""
        with self.store._read() as s:
            rows = self._batches(s, model)
            counts: dict[int, dict[str, int]] = {}
            pks = [b.id for b, _ in rows]
            if pks:
                for pk, verdict in s.execute(select(S.WatchResult.batch_pk, S.WatchResult.verdict)
                                             .where(S.WatchResult.batch_pk.in_(pks))).all():
                    c = counts.setdefault(pk, {"PASS": 0, "WARN": 0, "FAIL": 0})
                    c[verdict] = c.get(verdict, 0) + 1
        out = []
        for b, version in rows:
            d = _row_dict(b, version)
            d["counts"] = counts.get(b.id, {"PASS": 0, "WARN": 0, "FAIL": 0})
            out.append(d)
        return out

    def batch_results(self, model: str, batch_id: str) -> dict | None:
        """The batch (dict) with `neurons`: [dict(neuron_id, kind, layer, index, label, verdict, reason,
        statistics, evidence)] ordered by neuron id; None for an unknown batch."""
        with self.store._read() as s:
            rows = self._batches(s, model, batch_id)
            if not rows:
                return None
            b, version = rows[0]
            res = s.execute(select(S.WatchResult, S.Neuron).join(S.Neuron, S.Neuron.id == S.WatchResult.neuron_id)
                            .where(S.WatchResult.batch_pk == b.id).order_by(S.Neuron.neuron_id)).all()
        out = _row_dict(b, version)
        out["neurons"] = [{"neuron_id": n.neuron_id, "kind": n.kind, "layer": n.layer, "index": n.index, "label": n.label,
                           "verdict": r.verdict, "reason": r.reason, "statistics": r.statistics or {},
                           "evidence": r.evidence or {}} for r, n in res]
        return out

    def neuron_timeline(self, model: str, neuron_id: str | None = None) -> dict[str, list[dict]]:
        """neuron id -> its result on every batch, oldest batch first: dict(batch_id, verdict, shift,
        shift_ci, above, below, p_value, reason, created_at)."""
        from .repository import _iso

        with self.store._read() as s:
            q = (select(S.WatchResult, S.Neuron.neuron_id, S.WatchBatch.batch_id, S.WatchBatch.created_at)
                 .join(S.Neuron, S.Neuron.id == S.WatchResult.neuron_id)
                 .join(S.WatchBatch, S.WatchBatch.id == S.WatchResult.batch_pk)
                 .join(S.Model, S.Model.id == S.WatchBatch.model_id).where(S.Model.name == model))
            if neuron_id is not None:
                q = q.where(S.Neuron.neuron_id == neuron_id)
            rows = s.execute(q.order_by(S.WatchBatch.created_at, S.WatchBatch.id)).all()
        out: dict[str, list[dict]] = {}
        for r, nid, bid, created in rows:
            st = r.statistics or {}
            out.setdefault(nid, []).append({
                "batch_id": bid, "verdict": r.verdict, "shift": st.get("shift"), "shift_ci": st.get("shift_ci"),
                "above": st.get("above"), "below": st.get("below"), "p_value": st.get("p_value"), "reason": r.reason,
                "created_at": _iso(created)})
        return out

    def reference_values(self, model: str, version: str, neuron_ids: list[str], last: int,
                         exclude_batch_id: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """Values [m, p] (columns in `neuron_ids` order) of the images of the last `last` PASS batches of
        (model, version) that hold every neuron, with image names ('batch/image') and the batch ids used."""
        with self.store._read() as s:
            rows = [(b, v) for b, v in self._batches(s, model) if v == str(version) and b.verdict == "PASS"
                    and b.batch_id != exclude_batch_id and set(neuron_ids) <= set(b.neuron_ids or [])]
        chosen = rows[-last:] if last else rows
        blocks, names, used = [], [], []
        for b, _ in chosen:
            if not b.values_path or not self.store.artifacts.exists(b.values_path):
                continue
            vals = self.store.artifacts.get_arrays(b.values_path)["values"]
            cols = [list(b.neuron_ids).index(n) for n in neuron_ids]
            blocks.append(np.asarray(vals, dtype=np.float64)[:, cols])
            names += [f"{b.batch_id}/{n}" for n in (b.image_names or [str(i) for i in range(len(vals))])]
            used.append(b.batch_id)
        if not blocks:
            return np.zeros((0, len(neuron_ids))), [], []
        return np.concatenate(blocks), names, used
