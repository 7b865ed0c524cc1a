"""Moved to `sources.mlflow_registry` (the `models:/` source); this module re-exports its names for one
release so that `storage.resolve` imports keep working. Import from `sources.mlflow_registry` instead."""
from sources.mlflow_registry import (check_registered_model, check_registry_source, list_registry_versions,
                                     parse_models_uri, register_state_dict, registered_version,
                                     resolve_registry_source)

__all__ = ["check_registered_model", "check_registry_source", "list_registry_versions", "parse_models_uri",
           "register_state_dict", "registered_version", "resolve_registry_source"]
