"""Benchmarks: opt-in measurements; the test suite runs each once at a tiny size."""
