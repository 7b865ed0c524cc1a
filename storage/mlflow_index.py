"""Moved to `sources.mlflow_index`; this module re-exports its names for one release so that
`storage.mlflow_index` imports keep working. Import from `sources.mlflow_index` instead."""
from sources.mlflow_index import registered_versions, run_exists, version_identity

__all__ = ["registered_versions", "run_exists", "version_identity"]
