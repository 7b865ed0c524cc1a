"""Persistence for neuron-audit's results: SQL schema and migrations, the repository, file artifacts
and MLflow tracking. Model sources (`models:/` resolution included) live in sources/; storage/ is handed
the store and tracker its caller opened (flows/runtime.py) and never loads the config itself.

Layering: storage/ may import audit/ and sources/; neither imports storage/.
"""
from .errors import NotFoundError, StoreUnavailableError, TrackingUnavailableError

__all__ = ["NotFoundError", "StoreUnavailableError", "TrackingUnavailableError"]
