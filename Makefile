# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (torch from pip as pinned below) and installs the package.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = true
export MLFLOW_DISABLE_TELEMETRY = true
export HF_HUB_OFFLINE = 1

.PHONY: demo demo-quick test test-fast benchmarks clean

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

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not postgres and not browser and not slow"

benchmarks: $(STAMP)
	$(PY) benchmarks/fv_speed.py
	$(PY) benchmarks/fv_quality.py
	$(PY) benchmarks/drift_bench.py

clean:
	rm -rf $(VENV) neuron-audit-demo .pytest_cache
