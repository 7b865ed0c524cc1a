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

A move is accepted only one-to-one (`one_to_one`): the destination's own baseline channel must
have left its index, and the cross-fitted match taken the other way (the destination's values
among the baseline's channels) must come back to the registered channel. Otherwise a
re-initialised channel with a near-duplicate elsewhere in the layer would "move" onto that
duplicate, which never left.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .resampling import photograph_folds
from .statistics import correlation_matrix, spearman


@dataclass(frozen=True)
class IdentityMatch:
    index: int                     # the candidate's channel both folds chose
    heldout_spearman: float        # mean over folds of its Spearman on the held-out photographs
    fold_choices: tuple[int, ...]  # each fold's choice
    agreed: bool                   # every fold chose `index`
    back_index: int | None = None  # the baseline channel the destination matches back to, cross-fitted (None: the
                                   # folds disagreed, or not checked)
    back_agrees: bool | None = None        # back_index is the registered channel (None: not checked)
    destination_left: bool | None = None   # the destination's own baseline channel left its index (None: not checked)
    within_null: bool | None = None        # measured at the destination, within its benign null (None: not checked)

    @property
    def one_to_one(self) -> bool:
        """Both checks of a move were made and passed (see the module docstring)."""
        return self.back_agrees is True and self.destination_left is True


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


def check_one_to_one(match: IdentityMatch, registered: int, candidate_layer: np.ndarray, baseline_layer: np.ndarray,
                     labels: np.ndarray, destination_left: bool) -> IdentityMatch:
    """`match` (of baseline channel `registered`) with the one-to-one checks filled in: the cross-fitted
    match of the destination's candidate values among the baseline's channels ([N, C], the same
    statistic) and whether the destination's own channel left its index (judged by the caller
    against the benign null)."""
    back = match_moved_channel(candidate_layer[:, match.index], baseline_layer, labels)
    back_index = back.index if back.agreed else None
    return replace(match, back_index=back_index, back_agrees=back_index == registered,
                   destination_left=bool(destination_left))
