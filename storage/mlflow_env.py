"""Moved to `sources.mlflow_env` (every MLflow client neuron-audit creates, the registry source's included, gets
these settings); this module re-exports its names for one release."""
from sources.mlflow_env import MLFLOW_ENV_DEFAULTS, apply_mlflow_env

__all__ = ["MLFLOW_ENV_DEFAULTS", "apply_mlflow_env"]
