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
def prefect_harness():
    """One Prefect test server for the whole session (`prefect_test_harness`), its API URL exported so that
    CLI subprocesses use it too. One only: nested harnesses leave Prefect's process-wide events worker
    sending to the outer server, and task runs then never reach the server the tests read."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


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
