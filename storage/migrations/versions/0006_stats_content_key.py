"""activation_stats.content_key: what produced a neuron's stored statistics (audit.contentkeys.
statistics_content_key: weights, architecture and model_args, neuron definition, probe content, statistics
version). Statistics are read back only under the same key; the rows of an existing store get NULL, so they
are computed again on the next audit instead of being reused after a changed index or checkpoint.

Revision ID: 0006_stats_content_key
Revises: 0005_indexes
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_stats_content_key'
down_revision = '0005_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('activation_stats', sa.Column('content_key', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('activation_stats') as batch:     # SQLite: copy-and-move
        batch.drop_column('content_key')
