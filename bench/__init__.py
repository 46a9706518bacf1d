"""Benchmark scripts for diffsolve (run as ``python -m bench.<name>`` from the repo root)."""
