"""Production batches watched for feature drift: watch_batches, watch_results, watch_alerts.

Revision ID: 0004_watch
Revises: 0003_mlflow
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')

revision = '0004_watch'
down_revision = '0003_mlflow'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('watch_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.String(length=200), nullable=False),
    sa.Column('source', sa.Text(), nullable=True),
    sa.Column('images_sha256', sa.String(length=64), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('n_skipped', sa.Integer(), nullable=False),
    sa.Column('skipped', JSONType, nullable=False),
    sa.Column('reference', JSONType, nullable=False),
    sa.Column('verdict', sa.String(length=8), nullable=False),
    sa.Column('joint', JSONType, nullable=False),
    sa.Column('summary', JSONType, nullable=False),
    sa.Column('neuron_ids', JSONType, nullable=False),
    sa.Column('image_names', JSONType, nullable=False),
    sa.Column('values_path', sa.Text(), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_watch_batches_model_id_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_watch_batches_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_watch_batches')),
    sa.UniqueConstraint('model_id', 'batch_id', name=op.f('uq_watch_batches_model_id'))
    )
    op.create_index('ix_watch_batches_created_at', 'watch_batches', ['created_at'], unique=False)
    op.create_table('watch_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_pk', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('statistics', JSONType, nullable=False),
    sa.Column('evidence', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_pk'], ['watch_batches.id'], name=op.f('fk_watch_results_batch_pk_watch_batches'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], name=op.f('fk_watch_results_neuron_id_neurons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_watch_results')),
    sa.UniqueConstraint('batch_pk', 'neuron_id', name=op.f('uq_watch_results_batch_pk'))
    )
    op.create_table('watch_alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_pk', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=50), nullable=False),
    sa.Column('payload', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivery_status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['batch_pk'], ['watch_batches.id'], name=op.f('fk_watch_alerts_batch_pk_watch_batches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_watch_alerts')),
    sa.UniqueConstraint('batch_pk', 'subject', 'channel', name=op.f('uq_watch_alerts_batch_pk'))
    )


def downgrade() -> None:
    op.drop_table('watch_alerts')
    op.drop_table('watch_results')
    op.drop_index('ix_watch_batches_created_at', table_name='watch_batches')
    op.drop_table('watch_batches')
