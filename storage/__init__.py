"""Persistence for neuron-audit: SQL schema and migrations, the repository, file artifacts,
MLflow tracking and `models:/` resolution.

Layering: storage/ may import audit/; audit/ never imports storage/.
"""
from .errors import NotFoundError, StoreUnavailableError, TrackingUnavailableError

__all__ = ["NotFoundError", "StoreUnavailableError", "TrackingUnavailableError"]
