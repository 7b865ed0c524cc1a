"""Multiple-testing adjustments of a family of p-values, shared by the version compare
(audit.drift) and `watch` (audit.watch): Holm's step-down procedure for a family-wise error
rate (what a FAIL promises) and Benjamini-Hochberg's step-up procedure for a false discovery
rate (what a WARN promises). Numpy only, so `watch` does not import the compare's statistics.
"""
from __future__ import annotations

import numpy as np

__all__ = ["benjamini_hochberg", "holm"]


def _adjust_sorted(pvalues, adjust) -> np.ndarray:
    """Apply `adjust(sorted p-values, m)` and return the adjusted values in the input order."""
    p = np.asarray(pvalues, float)
    if len(p) == 0:
        return p
    order = np.argsort(p, kind="stable")
    out = np.empty(len(p))
    out[order] = adjust(p[order], len(p))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control)."""
    return _adjust_sorted(pvalues, lambda ps, m: np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps)))


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate control)."""
    return _adjust_sorted(pvalues, lambda ps, m: np.minimum(
        1.0, np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]))
