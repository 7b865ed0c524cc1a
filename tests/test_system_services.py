"""A service the suite needs but cannot find fails the run when CI=true and skips it otherwise; the tests
never install system packages themselves (`make system-deps` does)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from _pytest.outcomes import Failed, Skipped

from system_services import service_missing

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.mark.parametrize("ci, outcome", [("true", Failed), ("", Skipped), ("false", Skipped)])
def test_missing_service_fails_only_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome) as e:
        service_missing("chromium is not installed")
    assert "chromium is not installed" in str(e.value) and "make system-deps" in str(e.value)


def test_no_test_installs_system_packages():
    """apt-get runs in `make system-deps`, which `make test` calls; never inside a fixture."""
    calls = [str(p.relative_to(REPO)) for p in TESTS.rglob("*.py")
             if re.search(r"""["']apt-get["']\s*,""", p.read_text())]
    assert calls == []
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\bsystem-deps\b", makefile, re.M), "make test installs the system services first"
    assert "CI=true" in (REPO / ".ci" / "run").read_text()
