"""Fixtures of the architecture tests: the probe photographs at 64 px and one random-init model per
family (tests/archs/families.py), built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from families import FAMILIES, build_model  # noqa: E402


@pytest.fixture(scope="session")
def probe64():
    """The built-in sample photographs, 2 deterministic crops each, at 64 px (normalized)."""
    from audit.probe import build_probe_set

    return build_probe_set("builtin:samples", size=64, crops_per_image=2)


@pytest.fixture(scope="session")
def family_model(probe64):
    """family key -> its random-init model (10 classes, zero-init traps removed, BN estimated on the probe)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(key: str) -> torch.nn.Module:
        if key not in cache:
            cache[key] = build_model(FAMILIES[key], probe64.images)
        return cache[key]

    return get

