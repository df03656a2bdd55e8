"""Measurements behind design choices (docs/performance.md): each runs as ``python -m experiments.probes.NAME``."""
