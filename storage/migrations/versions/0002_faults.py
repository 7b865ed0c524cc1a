"""Run ownership and recorded checks: audit runs know their process (host, pid, pid start
time, heartbeat) so that a killed run is marked `interrupted` by the next one, and keep a
JSON summary (versions skipped as unchanged, neurons not audited); `audit_checks` records the
fingerprint of each audited version and comparison, so that an unchanged one is recognised
before any model is loaded.

Revision ID: 0002_faults
Revises: 0001
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')

revision = '0002_faults'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_runs') as batch:
        batch.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('pid_started', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('summary', JSONType, nullable=True))
    op.create_table('audit_checks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('manifest', JSONType, nullable=False),
    sa.Column('audit_run_id', sa.Integer(), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_run_id'], ['audit_runs.id'], name=op.f('fk_audit_checks_audit_run_id_audit_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_audit_checks_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_checks')),
    sa.UniqueConstraint('model_id', 'kind', 'subject', name=op.f('uq_audit_checks_model_id'))
    )


def downgrade() -> None:
    op.drop_table('audit_checks')
    with op.batch_alter_table('audit_runs') as batch:
        batch.drop_column('summary')
        batch.drop_column('heartbeat_at')
        batch.drop_column('pid_started')
        batch.drop_column('pid')
        batch.drop_column('host')
