"""Fixtures for the drift tests: a small probe set (96 px, 4 crops per photograph) and
helpers that build Lite0 variants with a known ground truth."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from benchmarks.edits import permute_stage_output, swap_class_rows
import torch


@pytest.fixture(scope="session")
def small_probe():
    from audit.probe import build_probe_set

    return build_probe_set("builtin:samples", size=96, crops_per_image=4)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (tests/ folders are not packages)."""
    class H:
        pass
    h = H()
    h.permute_stage_output = staticmethod(permute_stage_output)
    h.swap_classes = staticmethod(swap_class_rows)
    h.ForwardCounter = ForwardCounter
    return h
