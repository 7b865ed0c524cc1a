"""Fixtures for the flow tests: a small real config (planted version 2 included),
Prefect under the session harness; the loopback webhook receiver is tests/conftest.py's."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY_VISUALIZATION = {"resolution": 64, "steps": 6, "seeds": [0, 1], "n_references": 4}
TINY_PROBE = {"crops_per_image": 16, "resolution": 96}


@pytest.fixture(scope="session")
def planted_checkpoint(tmp_path_factory) -> Path:
    """Lite0 with the demo's planted change (espresso fires on cats), as safetensors."""
    from flows.demo import build_planted_version

    path = tmp_path_factory.mktemp("ckpt") / "v2.safetensors"
    build_planted_version(path)
    return path


def write_config(directory: Path, checkpoint: Path, webhook: str | None = None, executor: dict | None = None,
                 seeds: list[int] | None = None) -> Path:
    from flows.demo import demo_config

    cfg = demo_config(quick=True)
    model = cfg["models"][0]
    model["visualization"] = {**TINY_VISUALIZATION, **({"seeds": seeds} if seeds else {})}
    model["probe"] = dict(TINY_PROBE)
    model["versions"][1]["source"] = f"file:{checkpoint}"
    cfg["alerts"]["webhook"] = webhook
    if executor:
        cfg["executor"] = executor
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def tiny_config(tmp_path, planted_checkpoint) -> Path:
    return write_config(tmp_path, planted_checkpoint)


