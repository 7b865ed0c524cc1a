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
- activation_stats: a neuron's activation statistics on a probe set for one version (+ npz of raw values),
  with the `content_key` of what produced them (weights, architecture and model_args, neuron definition,
  probe content, statistics version); read back only under the same key.
- drift_results: comparison of one neuron between a baseline and a candidate version on a probe set.
- alerts: a notification of a FAIL drift result on a channel (e.g. "webhook"), with its delivery state;
  open while `resolved_at` is NULL.
- mlflow_runs: what one audit run logged to the MLflow run of a model version: 'logged' with the MLflow run (and
  experiment) id, or 'pending' when MLflow could not be reached (the next run logs it).
- mlflow_logged: the ledger of what an MLflow run of a model version holds (one row per metric, tag, image or
  report, with a digest of its content), so that a re-audit logs only what is new.
- audit_checks: the fingerprint (weights, config, images, software) of the last complete audit of a version
  (kind 'version', subject = the version) or comparison (kind 'compare', subject = 'A..B'), with a manifest of
  the artifacts it produced; an unchanged version is recognised from it before any model is loaded.
- watch_batches / watch_results / watch_alerts: production batches watched for feature drift
  (`neuron-audit watch`), each neuron's verdict on a batch, and the webhook alerts of their FAILs.
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
    # running | completed | completed_with_errors (some neuron/version not audited) | interrupted | failed
    status: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[Optional[str]] = mapped_column(Text)
    # the process that runs it (a killed run is recognised by its dead owner) and its last sign of life
    host: Mapped[Optional[str]] = mapped_column(String(255))
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    pid_started: Mapped[Optional[str]] = mapped_column(String(40))
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(TS)
    summary: Mapped[Optional[dict[str, Any]]] = mapped_column(PortableJSON)   # skipped / not audited / warnings


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
    # what produced them (audit.contentkeys.statistics_content_key); a row under another key is stale, never read.
    # NULL: made before 0006_stats_content_key, or by a writer that did not say: never read back either.
    content_key: Mapped[Optional[str]] = mapped_column(String(64))
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


class AuditCheck(Base):
    __tablename__ = "audit_checks"
    __table_args__ = (UniqueConstraint("model_id", "kind", "subject"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))            # version | compare
    subject: Mapped[str] = mapped_column(String(300))        # the version, or 'BASELINE..CANDIDATE'
    fingerprint: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    audit_run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("audit_runs.id", ondelete="SET NULL"))
    checked_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class WatchBatch(Base):
    """A production batch watched with `neuron-audit watch` (one row per model and batch id; a re-run
    updates it in place). `values_path`: npz of the per-image neuron values (column order: `neuron_ids`)."""
    __tablename__ = "watch_batches"
    __table_args__ = (UniqueConstraint("model_id", "batch_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(String(200))
    source: Mapped[Optional[str]] = mapped_column(Text)
    images_sha256: Mapped[str] = mapped_column(String(64))
    n_images: Mapped[int] = mapped_column(Integer)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    reference: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    verdict: Mapped[str] = mapped_column(String(8))
    joint: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    neuron_ids: Mapped[list[Any]] = mapped_column(PortableJSON, default=list)
    image_names: Mapped[list[Any]] = mapped_column(PortableJSON, default=list)
    values_path: Mapped[Optional[str]] = mapped_column(Text)
    mlflow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class WatchResult(Base):
    """One neuron's verdict on a watched batch (statistics, intervals, evidence images, histograms)."""
    __tablename__ = "watch_results"
    __table_args__ = (UniqueConstraint("batch_pk", "neuron_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("watch_batches.id", ondelete="CASCADE"))
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"))
    verdict: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    statistics: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    evidence: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class WatchAlert(Base):
    """A notification of a FAIL on a watched batch: `subject` is the neuron id, or "(joint)" for the
    joint test. One per (batch, subject, channel), so a re-run never alerts twice."""
    __tablename__ = "watch_alerts"
    __table_args__ = (UniqueConstraint("batch_pk", "subject", "channel"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("watch_batches.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    sent_at: Mapped[Optional[datetime]] = mapped_column(TS)
    delivery_status: Mapped[str] = mapped_column(String(20), default="pending")   # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[Optional[str]] = mapped_column(Text)


Index("ix_drift_results_candidate", DriftResultRow.candidate_version_id)
Index("ix_alerts_open", Alert.resolved_at)
Index("ix_audit_runs_started_at", AuditRun.started_at)
# Read paths of the dashboard at fleet size (migration 0005_indexes says what each serves).
Index("ix_drift_results_neuron_latest", DriftResultRow.neuron_id, DriftResultRow.created_at, DriftResultRow.id)
Index("ix_version_visualizations_visualization", VersionVisualization.visualization_id)
Index("ix_mlflow_runs_model_version", MlflowRun.model_version_id)
Index("ix_alerts_open_created", Alert.resolved_at, Alert.created_at)
Index("ix_watch_batches_created_at", WatchBatch.created_at)

metadata = Base.metadata
