"""Fixtures for the visualization-quality tests: tiny reference sets from the built-in photos."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def class_refs(sample_images):
    """8 random crops (96 px, normalized) of coffee and chelsea."""
    from audit.references import class_references

    return class_references([sample_images["coffee"], sample_images["chelsea"]], size=96, n=8, seed=0)


@pytest.fixture(scope="session")
def photo_arrays(sample_images):
    """name -> uint8 [H, W, 3] array of the built-in photographs."""
    return {k: np.asarray(v.convert("RGB")) for k, v in sample_images.items()}
