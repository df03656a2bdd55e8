"""Measurements behind design choices and findings (docs/performance.md, docs/results.md): each runs as
``python -m experiments.probes.NAME``."""
