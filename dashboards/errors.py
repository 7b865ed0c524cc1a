"""Why a page cannot be shown: the app answers 404 for `NotFound`, 400 for `BadRequest`."""
from __future__ import annotations


class NotFound(LookupError):
    """The page's subject (model, neuron, version, comparison) is not in the store."""


class BadRequest(ValueError):
    """The page's parameters cannot name a page (e.g. a comparison of a version with itself)."""
