"""Benchmarks for circuitforge_core.db: `make bench` (python -m bench)."""
