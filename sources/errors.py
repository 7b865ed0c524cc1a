"""The errors of model sources: one set for every scheme and weights format.

Each is bad user input (`AuditInputError`, exit code 2) whose message names the value (the source
string, file or registry URI) and, where the caller knows it, the config key it came from.
`TrackingUnavailableError` is the runtime failure of an unreachable MLflow store (not bad input): it lives
here because the registry source raises it; storage re-exports it for its own tracking."""
from __future__ import annotations

from audit.errors import AuditInputError


class SourceError(AuditInputError):
    """A model source that cannot be read. `value` is the source, file or URI; `key` the config key, if known."""

    def __init__(self, message: str, *, value: str | None = None, key: str | None = None):
        self.value, self.key = value, key
        super().__init__(f"{key}: {message}" if key else message)


class UnknownSourceError(SourceError):
    """A source string no registered scheme reads."""


class SourceNotFoundError(SourceError):
    """A file, built-in model or registered model version that does not exist."""


class SourceFormatError(SourceError):
    """Weights neuron-audit cannot read (not a state dict, an unreadable archive, only pickled code)."""


class TrackingUnavailableError(RuntimeError):
    """MLflow cannot be reached (after retries). Results stay in the database, marked `pending`."""

    def __init__(self, tracking_uri: str, reason: str):
        self.tracking_uri, self.reason = tracking_uri, reason
        super().__init__(f"MLflow tracking server {tracking_uri} is unavailable: {reason} "
                         "(results are kept in the database as pending and logged by the next run)")
