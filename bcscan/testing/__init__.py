"""Helpers for tests, benchmarks and examples: synthetic smears and slides, ground-truth loaders
and detection/segmentation scores on the shared real data."""
