"""Errors raised by storage/. They are runtime failures (CLI exit code 2), not bad user input."""
from __future__ import annotations


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached (after retries). The message names the URL (password masked) and the reason."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"database {url} is unavailable: {reason}")


class TrackingUnavailableError(RuntimeError):
    """MLflow cannot be reached (after retries). Results stay in the database, marked `pending`."""

    def __init__(self, tracking_uri: str, reason: str):
        self.tracking_uri, self.reason = tracking_uri, reason
        super().__init__(f"MLflow tracking server {tracking_uri} is unavailable: {reason} "
                         "(results are kept in the database as pending and logged by the next run)")


class NotFoundError(LookupError):
    """A model, version, neuron, probe set or row that the store does not hold."""
