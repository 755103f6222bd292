"""Benchmarks of the curator: ``python -m benchmarks.quality`` and ``python -m benchmarks.speed``."""
