"""Initial schema: models, versions, the neuron registry, probe sets, audit runs,
visualizations (+ per-version links), activation statistics, drift results, alerts, MLflow runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 05:49:50.590804
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# Portable JSON: TEXT on SQLite, JSONB on PostgreSQL (same as storage/schema.py).
JSONType = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('flow_run_id', sa.String(length=100), nullable=True),
    sa.Column('config_sha256', sa.String(length=64), nullable=True),
    sa.Column('package_version', sa.String(length=50), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_runs')),
    sa.UniqueConstraint('flow_run_id', name=op.f('uq_audit_runs_flow_run_id'))
    )
    op.create_index('ix_audit_runs_started_at', 'audit_runs', ['started_at'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('architecture', sa.String(length=200), nullable=True),
    sa.Column('champion', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    op.create_table('probe_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('meta', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_probe_sets')),
    sa.UniqueConstraint('sha256', name=op.f('uq_probe_sets_sha256'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=100), nullable=False),
    sa.Column('source', sa.Text(), nullable=True),
    sa.Column('weights_sha256', sa.String(length=64), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_versions_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('model_id', 'version', name=op.f('uq_model_versions_model_id'))
    )
    op.create_table('neurons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('layer', sa.String(length=300), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=300), nullable=True),
    sa.Column('references', sa.Text(), nullable=True),
    sa.Column('critical', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_neurons_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_neurons')),
    sa.UniqueConstraint('model_id', 'neuron_id', name=op.f('uq_neurons_model_id'))
    )
    op.create_table('activation_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('probe_set_id', sa.Integer(), nullable=False),
    sa.Column('stats', JSONType, nullable=False),
    sa.Column('values_path', sa.Text(), nullable=True),
    sa.Column('audit_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_activation_stats_audit_run_id_audit_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_activation_stats_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], name=op.f('fk_activation_stats_neuron_id_neurons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['probe_set_id'], ['probe_sets.id'], name=op.f('fk_activation_stats_probe_set_id_probe_sets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activation_stats')),
    sa.UniqueConstraint('neuron_id', 'model_version_id', 'probe_set_id', name=op.f('uq_activation_stats_neuron_id'))
    )
    op.create_table('drift_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('baseline_version_id', sa.Integer(), nullable=False),
    sa.Column('candidate_version_id', sa.Integer(), nullable=False),
    sa.Column('probe_set_id', sa.Integer(), nullable=False),
    sa.Column('statistics', JSONType, nullable=False),
    sa.Column('ci', JSONType, nullable=False),
    sa.Column('verdict', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('matched_index', sa.Integer(), nullable=True),
    sa.Column('audit_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_drift_results_audit_run_id_audit_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['baseline_version_id'], ['model_versions.id'], name=op.f('fk_drift_results_baseline_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['candidate_version_id'], ['model_versions.id'], name=op.f('fk_drift_results_candidate_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], name=op.f('fk_drift_results_neuron_id_neurons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['probe_set_id'], ['probe_sets.id'], name=op.f('fk_drift_results_probe_set_id_probe_sets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_results')),
    sa.UniqueConstraint('neuron_id', 'baseline_version_id', 'candidate_version_id', 'probe_set_id', name=op.f('uq_drift_results_neuron_id'))
    )
    op.create_index('ix_drift_results_candidate', 'drift_results', ['candidate_version_id'], unique=False)

    op.create_table('mlflow_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('audit_run_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('params', JSONType, nullable=False),
    sa.Column('report_path', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_mlflow_runs_audit_run_id_audit_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_mlflow_runs_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mlflow_runs')),
    sa.UniqueConstraint('audit_run_id', 'model_version_id', name=op.f('uq_mlflow_runs_audit_run_id'))
    )
    op.create_table('visualizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=50), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('settings_sha256', sa.String(length=64), nullable=False),
    sa.Column('settings', JSONType, nullable=False),
    sa.Column('content_key', sa.String(length=128), nullable=False),
    sa.Column('image_path', sa.Text(), nullable=False),
    sa.Column('mask_path', sa.Text(), nullable=True),
    sa.Column('mlflow_artifact_uri', sa.Text(), nullable=True),
    sa.Column('loss_history', JSONType, nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('audit_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_visualizations_audit_run_id_audit_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_visualizations_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], name=op.f('fk_visualizations_neuron_id_neurons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_visualizations')),
    sa.UniqueConstraint('neuron_id', 'content_key', name=op.f('uq_visualizations_neuron_id'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('drift_result_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=50), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivery_status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['drift_result_id'], ['drift_results.id'], name=op.f('fk_alerts_drift_result_id_drift_results'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('drift_result_id', 'channel', name=op.f('uq_alerts_drift_result_id'))
    )
    op.create_index('ix_alerts_open', 'alerts', ['resolved_at'], unique=False)

    op.create_table('version_visualizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('visualization_id', sa.Integer(), nullable=False),
    sa.Column('reused', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_version_visualizations_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['visualization_id'], ['visualizations.id'], name=op.f('fk_version_visualizations_visualization_id_visualizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_version_visualizations')),
    sa.UniqueConstraint('model_version_id', 'visualization_id', name=op.f('uq_version_visualizations_model_version_id'))
    )


def downgrade() -> None:
    op.drop_table('version_visualizations')
    op.drop_index('ix_alerts_open', table_name='alerts')
    op.drop_table('alerts')
    op.drop_table('visualizations')
    op.drop_table('mlflow_runs')
    op.drop_index('ix_drift_results_candidate', table_name='drift_results')
    op.drop_table('drift_results')
    op.drop_table('activation_stats')
    op.drop_table('neurons')
    op.drop_table('model_versions')
    op.drop_table('probe_sets')
    op.drop_table('models')
    op.drop_index('ix_audit_runs_started_at', table_name='audit_runs')
    op.drop_table('audit_runs')
