"""Benchmarks: `bin/bench` (or `python -m bench`). Not tests: they measure, they do not assert."""
