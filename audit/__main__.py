"""`python -m audit` is the `neuron-audit` command line."""
import importlib

# The CLI lives in flows/ (it drives the Prefect flows); resolved at run time so the
# library itself stays free of orchestration imports.
importlib.import_module("flows.cli").main()
