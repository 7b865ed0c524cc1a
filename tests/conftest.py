"""Fixtures shared by every test folder. Each subsystem's folder has its own conftest.py."""
from __future__ import annotations

import os

# Telemetry off and no hub access, before anything imports prefect/mlflow/timm.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def lite0():
    """The built-in EfficientNet-Lite0 (ImageNet weights from the PyPI package), eval mode."""
    from audit.models import load_model

    return load_model("efficientnet_lite0", "builtin:efficientnet_lite0")


@pytest.fixture(scope="session")
def sample_images():
    """name -> RGB PIL image of the built-in sample photographs."""
    from audit.assets import builtin_sample_names, load_rgb_images, resolve_images

    out = {}
    for name in builtin_sample_names():
        out[name] = load_rgb_images(resolve_images(f"builtin:samples/{name}")).images[0]
    return out
