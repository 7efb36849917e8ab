"""Evaluation: query sets (our JSONL, the official CIRR and FashionIQ files), the benchmark
protocols and their metrics, split galleries, the runner, submission files, the report."""
