"""Honest channel identity: did an inner channel move to another index, or change?

A version can hold the same channels in another order (a permuted stage, a re-exported model).
Choosing the best-matching channel on the same activations that then judge the match makes any
channel look matched: among hundreds of channels one always correlates well by chance. So the
choice is cross-fitted over photographs: the probe photographs are dealt into two folds; on each
fold the candidate channel that best matches (Spearman) the baseline channel on the OTHER fold's
photographs is chosen, and its agreement is measured on the held-out fold. A match stands only
when both folds choose the same channel and its held-out Spearman clears
`thresholds.identity_match_spearman`; the caller then judges the matched channel against the
benign null like any other (a moved channel passes, a re-initialised one fails).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .resampling import photograph_folds
from .statistics import correlation_matrix, spearman


@dataclass(frozen=True)
class IdentityMatch:
    index: int                     # the candidate's channel both folds chose
    heldout_spearman: float        # mean over folds of its Spearman on the held-out photographs
    fold_choices: tuple[int, ...]  # each fold's choice
    agreed: bool                   # every fold chose `index`


def match_moved_channel(baseline_column: np.ndarray, candidate_layer: np.ndarray, labels: np.ndarray) -> IdentityMatch:
    """Cross-fitted best match of a baseline channel's values [N] among the candidate layer's
    channels [N, C] (labels: photograph of each image, audit.drift.resampling)."""
    a = np.asarray(baseline_column, float)
    folds = photograph_folds(labels, 2)
    choices, heldout = [], []
    for held in folds:
        train = ~held
        corr = correlation_matrix(a[train, None], candidate_layer[train])[0]
        j = int(np.argmax(corr))
        choices.append(j)
        rho = spearman(a[held], candidate_layer[held, j])
        heldout.append(rho if np.isfinite(rho) else 0.0)
    agreed = len(set(choices)) == 1
    return IdentityMatch(index=choices[0] if agreed else int(choices[np.argmax(heldout)]),
                         heldout_spearman=float(np.mean(heldout)), fold_choices=tuple(choices), agreed=agreed)
