"""Alembic migrations of the neuron-audit store (shipped as package data; see storage/migrate.py)."""
