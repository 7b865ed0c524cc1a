"""The registry aggregate of the audit store (`RegistryRepository`, mixed into `AuditStore`).

What is audited: models (architecture, champion), their registered versions (source, weights digest),
the neurons of each model as the config registers them (inactive once the config drops them), and the
probe sets the statistics are computed on (keyed by the SHA-256 of their content). Writes are
idempotent upserts; they need the store's plumbing (`self._write`, `self._read`, `self._upsert`).
"""
from __future__ import annotations

from typing import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import schema as S
from .artifacts import jsonable
from .timestamps import now_utc as _now


class RegistryRepository:
    """Models, versions, neurons (registry sync) and probe sets: writes, and the probe-set meta read."""

    def sync_registry(self, cfg) -> None:
        """Upsert the models and neurons of an AuditConfig; neurons no longer in the config become inactive."""
        def tx(s: Session) -> None:
            for m in cfg.models:
                mid = self._upsert(s, S.Model.__table__, {"name": m.name, "architecture": m.architecture,
                                                          "champion": m.champion, "created_at": _now()},
                                   ["name"], ["architecture", "champion"])
                keep = []
                for n in m.neurons:
                    self._upsert(s, S.Neuron.__table__,
                                 {"model_id": mid, "neuron_id": n.id, "kind": n.kind, "layer": n.layer, "index": n.index,
                                  "label": n.label, "references": n.references_text, "critical": n.critical, "active": True},
                                 ["model_id", "neuron_id"],
                                 ["kind", "layer", "index", "label", "references", "critical", "active"])
                    keep.append(n.id)
                s.execute(update(S.Neuron).where(S.Neuron.model_id == mid, S.Neuron.neuron_id.not_in(keep))
                          .values(active=False))
        self._write(tx)

    def upsert_model_version(self, model: str, version: str, source: str | None, weights_sha256: str | None) -> int:
        def tx(s: Session) -> int:
            mid = self._upsert(s, S.Model.__table__, {"name": model, "architecture": None, "champion": None,
                                                      "created_at": _now()}, ["name"])
            return self._upsert(s, S.ModelVersion.__table__,
                                {"model_id": mid, "version": str(version), "source": source,
                                 "weights_sha256": weights_sha256, "registered_at": _now()},
                                ["model_id", "version"], ["source", "weights_sha256"])
        return self._write(tx)

    def upsert_probe_set(self, sha256: str, spec: str, n_images: int, meta: Mapping | None = None) -> int:
        """meta may hold `names` (one per probe image), used to name top-k images in neuron_history."""
        return self._write(lambda s: self._upsert(
            s, S.ProbeSet.__table__, {"sha256": sha256, "spec": spec, "n_images": int(n_images),
                                      "meta": jsonable(dict(meta or {})), "created_at": _now()},
            ["sha256"], ["spec", "n_images", "meta"]))

    def probe_set_meta(self, sha256: str) -> dict | None:
        """The stored meta of a probe set, or None when the probe set is not stored yet."""
        with self._read() as s:
            meta = s.execute(select(S.ProbeSet.meta).where(S.ProbeSet.sha256 == sha256)).first()
        return None if meta is None else dict(meta[0] or {})
