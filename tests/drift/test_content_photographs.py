"""`content_p_value` permutes photographs, not crops: the top-k crops of two photographs differ
in content whatever the crops, and with two photographs no permutation of photographs can say so."""
from __future__ import annotations

import numpy as np

from audit.drift import resampling as rs
from audit.drift import statistics as st


def test_content_p_value_permutes_photographs_not_crops():
    rng = np.random.default_rng(0)
    photo = rng.normal(size=(2, 8)) * 3                       # two photographs, 6 crops each
    f = st.normalize_features(np.repeat(photo, 6, axis=0) + rng.normal(size=(12, 8)))
    labels = np.repeat([0, 1], 6)
    a, b = np.arange(5), np.arange(6, 11)                     # A's top-5: photograph 0, B's: photograph 1
    assert rs.content_p_value(f, a, b, n_perm=999) < 0.01               # crops as units: "significant"
    assert rs.content_p_value(f, a, b, n_perm=999, labels=labels) >= 0.25  # two photographs: cannot be
    # many photographs, each with its own content, split between A and B: photographs as units still see it
    many = st.normalize_features(np.concatenate([rng.normal(size=(10, 3)) + [4, 0, 0], rng.normal(size=(10, 3))]))
    assert rs.content_p_value(many, np.arange(5), np.arange(10, 15), n_perm=999, labels=np.arange(20)) < 0.01
    assert rs.content_p_value(many, np.arange(5), np.arange(5), labels=np.arange(20)) == 1.0
