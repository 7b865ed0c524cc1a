"""MLflow done the MLflow way: one MLflow run per model version, a ledger of what it holds (mlflow_logged), and the
experiment id next to each logged run (links to the MLflow UI).

Revision ID: 0003_mlflow
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_mlflow'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mlflow_logged',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=500), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('audit_run_id', sa.Integer(), nullable=True),
    sa.Column('logged_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_mlflow_logged_audit_run_id_audit_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_mlflow_logged_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mlflow_logged')),
    sa.UniqueConstraint('mlflow_run_id', 'key', name=op.f('uq_mlflow_logged_mlflow_run_id'))
    )
    op.create_index(op.f('ix_mlflow_logged_model_version_id'), 'mlflow_logged', ['model_version_id'], unique=False)
    with op.batch_alter_table('mlflow_runs') as batch:
        batch.add_column(sa.Column('mlflow_experiment_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mlflow_runs') as batch:
        batch.drop_column('mlflow_experiment_id')
    op.drop_index(op.f('ix_mlflow_logged_model_version_id'), table_name='mlflow_logged')
    op.drop_table('mlflow_logged')
