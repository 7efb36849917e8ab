"""Benchmarks: each writes benchmarks/results/<name>.json (with machine info); compare ratios
within one run, never absolute numbers across machines."""
