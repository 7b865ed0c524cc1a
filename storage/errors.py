"""Errors raised by storage/. They are runtime failures (CLI exit code 2), not bad user input."""
from __future__ import annotations

# raised by the MLflow registry source too, so it lives in sources/errors.py; storage/ raises the same class
from sources.errors import TrackingUnavailableError

__all__ = ["NotFoundError", "StoreUnavailableError", "TrackingUnavailableError"]


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached (after retries). The message names the URL (password masked) and the reason."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"database {url} is unavailable: {reason}")


class NotFoundError(LookupError):
    """A model, version, neuron, probe set or row that the store does not hold."""
