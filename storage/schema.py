"""The SQL schema (SQLAlchemy 2 typed ORM). Migrations in storage/migrations mirror it.

Row meanings:
- models: a model family from the config (name, timm architecture, champion version label).
- model_versions: one registered version of a model; `weights_sha256` is the content hash of its weights.
- neurons: the neuron registry of a model (config `neurons:`); `active` is False once removed from the config.
- probe_sets: a fixed probe image set, keyed by its content hash.
- audit_runs: one execution of the audit flow (Prefect flow run id when there is one).
- visualizations: one rendered image (+ optional mask) of a neuron, keyed by `content_key`
  (hash of upstream weights + references + settings + seed), so one row serves every version whose
  upstream weights did not change; `model_version_id` is the version it was first rendered for.
- version_visualizations: which visualizations belong to which version (rendered or reused).
- activation_stats: a neuron's activation statistics on a probe set for one version (+ npz of raw values).
- drift_results: comparison of one neuron between a baseline and a candidate version on a probe set.
- alerts: a notification of a FAIL drift result on a channel (e.g. "webhook"), with its delivery state;
  open while `resolved_at` is NULL.
- mlflow_runs: what one audit run logged to the MLflow run of a model version: 'logged' with the MLflow run (and
  experiment) id, or 'pending' when MLflow could not be reached (the next run logs it).
- mlflow_logged: the ledger of what an MLflow run of a model version holds (one row per metric, tag, image or
  report, with a digest of its content), so that a re-audit logs only what is new.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSON stored as TEXT on SQLite and as JSONB on PostgreSQL.
PortableJSON = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: PortableJSON, list[Any]: PortableJSON}


NAMING = {"ix": "ix_%(table_name)s_%(column_0_name)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}
Base.metadata.naming_convention = NAMING

TS = DateTime(timezone=True)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    architecture: Mapped[Optional[str]] = mapped_column(String(200))
    champion: Mapped[Optional[str]] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(100))
    source: Mapped[Optional[str]] = mapped_column(Text)
    weights_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Neuron(Base):
    __tablename__ = "neurons"
    __table_args__ = (UniqueConstraint("model_id", "neuron_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    neuron_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    layer: Mapped[str] = mapped_column(String(300))
    index: Mapped[int] = mapped_column("index", Integer)
    label: Mapped[Optional[str]] = mapped_column(String(300))
    references: Mapped[Optional[str]] = mapped_column("references", Text)
    critical: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ProbeSet(Base):
    __tablename__ = "probe_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[str] = mapped_column(Text)
    n_images: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuditRun(Base):
    __tablename__ = "audit_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(100), unique=True)
    config_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    package_version: Mapped[Optional[str]] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(TS)
    status: Mapped[str] = mapped_column(String(20), default="running")   # running | completed | failed | crashed
    error: Mapped[Optional[str]] = mapped_column(Text)


class Visualization(Base):
    __tablename__ = "visualizations"
    __table_args__ = (UniqueConstraint("neuron_id", "content_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(50))
    seed: Mapped[int] = mapped_column(Integer)
    settings_sha256: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    content_key: Mapped[str] = mapped_column(String(128))
    image_path: Mapped[str] = mapped_column(Text)
    mask_path: Mapped[Optional[str]] = mapped_column(Text)
    mlflow_artifact_uri: Mapped[Optional[str]] = mapped_column(Text)
    loss_history: Mapped[list[Any]] = mapped_column(PortableJSON, default=list)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    audit_run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("audit_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class VersionVisualization(Base):
    __tablename__ = "version_visualizations"
    __table_args__ = (UniqueConstraint("model_version_id", "visualization_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    visualization_id: Mapped[int] = mapped_column(ForeignKey("visualizations.id", ondelete="CASCADE"))
    reused: Mapped[bool] = mapped_column(Boolean, default=False)


class ActivationStatsRow(Base):
    __tablename__ = "activation_stats"
    __table_args__ = (UniqueConstraint("neuron_id", "model_version_id", "probe_set_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    probe_set_id: Mapped[int] = mapped_column(ForeignKey("probe_sets.id", ondelete="CASCADE"))
    stats: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    values_path: Mapped[Optional[str]] = mapped_column(Text)
    audit_run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("audit_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class DriftResultRow(Base):
    __tablename__ = "drift_results"
    __table_args__ = (UniqueConstraint("neuron_id", "baseline_version_id", "candidate_version_id", "probe_set_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    baseline_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    candidate_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    probe_set_id: Mapped[int] = mapped_column(ForeignKey("probe_sets.id", ondelete="CASCADE"))
    statistics: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    ci: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    verdict: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    matched_index: Mapped[Optional[int]] = mapped_column(Integer)
    audit_run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("audit_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("drift_result_id", "channel"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    drift_result_id: Mapped[int] = mapped_column(ForeignKey("drift_results.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    sent_at: Mapped[Optional[datetime]] = mapped_column(TS)
    delivery_status: Mapped[str] = mapped_column(String(20), default="pending")   # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    resolved_at: Mapped[Optional[datetime]] = mapped_column(TS)


class MlflowRun(Base):
    __tablename__ = "mlflow_runs"
    __table_args__ = (UniqueConstraint("audit_run_id", "model_version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audit_run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    mlflow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[Optional[str]] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(10), default="pending")   # logged | pending
    params: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    report_path: Mapped[Optional[str]] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class MlflowLogged(Base):
    __tablename__ = "mlflow_logged"
    __table_args__ = (UniqueConstraint("mlflow_run_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    mlflow_run_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(500))          # "metric:<key>", "image:<key>", "report:<path>", ...
    digest: Mapped[str] = mapped_column(String(128))       # what was logged: a value or a content hash
    audit_run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("audit_runs.id", ondelete="SET NULL"))
    logged_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


Index("ix_drift_results_candidate", DriftResultRow.candidate_version_id)
Index("ix_alerts_open", Alert.resolved_at)
Index("ix_audit_runs_started_at", AuditRun.started_at)

metadata = Base.metadata
