"""Fixtures of the VITAL tests (the session-wide `lite0` and `sample_images` come from tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def coffee_refs(sample_images):
    from audit.references import class_references

    return class_references([sample_images["coffee"]], 64, 6, seed=0)


@pytest.fixture(scope="session")
def probe64(sample_images):
    """A small probe set: 4 random crops of 6 photographs at 64 px (normalized)."""
    from audit.references import class_references

    names = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera"]
    return torch.cat([class_references([sample_images[n]], 64, 4, seed=i) for i, n in enumerate(names)])


@pytest.fixture(scope="session")
def tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
