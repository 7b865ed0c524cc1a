"""The system services the suite drives for real (PostgreSQL, headless Chromium): where they are, and what
a test does when one is missing.

Installing them is not the tests' job: `make system-deps` (called by `make test`) installs them with
apt-get. A missing service skips its tests on a developer's machine, and fails them when `CI=true`: a CI
run green because it skipped PostgreSQL or the browser would have tested nothing of either."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from typing import NoReturn

import pytest

INSTALL_HINT = "run `make system-deps` (apt-get install postgresql chromium, as root)"


def in_ci() -> bool:
    """True when the environment says this is a CI run (`CI=true`, as GitHub/GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def service_missing(message: str) -> NoReturn:
    """Skip the calling test (locally) or fail it (CI=true) because a system service is not there."""
    text = f"{message}; {INSTALL_HINT}"
    if in_ci():
        pytest.fail(f"CI=true and a required service is missing: {text}", pytrace=False)
    pytest.skip(text)


def find_initdb() -> str | None:
    """The newest PostgreSQL `initdb` of the Debian packages, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return found[-1]
    return shutil.which("initdb")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


# ---------------------------------------------------------------- PostgreSQL
def as_postgres(cmd: str) -> subprocess.CompletedProcess:
    """Run a shell command as the `postgres` user when root (initdb refuses root), else as this user."""
    if os.geteuid() == 0:
        return subprocess.run(["su", "postgres", "-c", cmd], capture_output=True, text=True, timeout=300)
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)


def new_pg_database(base: str) -> tuple[str, str]:
    """(URL, name) of a new empty database on the server at `base` (postgresql+psycopg://...)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}", name


def drop_pg_database(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
