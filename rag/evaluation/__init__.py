"""Evaluation: query-set readers (our JSONL, CIRR, FashionIQ), ranking metrics, the runner."""
