# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (torch from pip as pinned below) and installs the package; `make test` also
# installs the system services the suite drives for real (`make system-deps`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# `make test` runs the suite in two worker processes (pytest-xdist), one torch thread each on a 2-core machine.
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = true
export MLFLOW_DISABLE_TELEMETRY = true
export HF_HUB_OFFLINE = 1

.PHONY: demo demo-quick test test-fast system-deps benchmarks bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo exits 1 when it finds the planted drift FAIL (SPEC exit codes): that is the
# expected outcome here, so only exit 2 (an error) fails the target.
demo: $(STAMP)
	$(VENV)/bin/neuron-audit demo; rc=$$?; [ $$rc -le 1 ] || exit $$rc

demo-quick: $(STAMP)
	$(VENV)/bin/neuron-audit demo --quick; rc=$$?; [ $$rc -le 1 ] || exit $$rc

# PostgreSQL and headless Chromium, which the tests start for real (tests/system_services.py), and the
# photographs of Debian's tuxpaint-stamps-default (the watch's new-photograph tests and benchmark). Installed
# with apt-get when missing (as root, or through sudo); otherwise it says what is missing and goes on:
# those tests then skip on a developer's machine and FAIL when CI=true.
SYSTEM_PACKAGES := postgresql chromium tuxpaint-stamps-default
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || missing="$$missing chromium"; \
	[ -d /usr/share/tuxpaint/stamps ] || missing="$$missing tuxpaint-stamps-default"; \
	if [ -z "$$missing" ]; then echo "system-deps: postgresql, chromium and the Tux Paint photographs are installed"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "system-deps: missing:$$missing; install them as root: apt-get install -y$$missing" \
	  "(their tests skip, and fail when CI=true)"; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "system-deps: missing:$$missing and no apt-get: install them" \
	  "with your system's package manager (their tests skip, and fail when CI=true)"; exit 0; fi; \
	echo "system-deps: apt-get install$$missing"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

test: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not postgres and not browser and not slow"

benchmarks: $(STAMP)
	$(PY) benchmarks/fv_speed.py
	$(PY) benchmarks/fv_quality.py
	$(PY) benchmarks/drift_bench.py

# Evidently, the anchor of benchmarks/data_drift_bench.py, in its own venv: its pins conflict with the project's
# (it is never installed into .venv). pandas<3: Evidently 0.7.23 imports a name pandas 3 removed.
EVIDENTLY_VENV := .venv-evidently
bench-deps: $(EVIDENTLY_VENV)/.installed
$(EVIDENTLY_VENV)/.installed:
	$(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install -q --upgrade pip
	$(EVIDENTLY_VENV)/bin/python -m pip install -q evidently==0.7.23 pandas==2.3.3
	touch $@

clean:
	rm -rf $(VENV) neuron-audit-demo .pytest_cache
