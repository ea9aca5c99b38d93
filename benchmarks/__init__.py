"""Reproducible speed and fidelity runs: `python -m benchmarks.NAME [--quick] --json`."""
