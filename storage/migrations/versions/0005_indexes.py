"""Indexes for the dashboard's read queries at fleet size (storage/queries.py):

- drift_results (neuron_id, created_at, id): the newest comparison of a neuron is one index seek, so
  "the latest verdict of each neuron" costs per neuron, not per row of history;
- version_visualizations (visualization_id): from a neuron's visualizations to the versions that show
  them (the thumbnail of each neuron, the compare page's images);
- mlflow_runs (model_version_id): the MLflow run of each version;
- alerts (resolved_at, created_at): one page of the open alerts, newest first, without sorting them all.

Revision ID: 0005_indexes
Revises: 0004_watch
"""
from __future__ import annotations

from alembic import op

revision = '0005_indexes'
down_revision = '0004_watch'
branch_labels = None
depends_on = None

INDEXES = [
    ('ix_drift_results_neuron_latest', 'drift_results', ['neuron_id', 'created_at', 'id']),
    ('ix_version_visualizations_visualization', 'version_visualizations', ['visualization_id']),
    ('ix_mlflow_runs_model_version', 'mlflow_runs', ['model_version_id']),
    ('ix_alerts_open_created', 'alerts', ['resolved_at', 'created_at']),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
