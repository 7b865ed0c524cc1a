"""Prefect orchestration of neuron-audit: the nightly audit flow, comparisons,
alerts, the deployment and the command line."""
