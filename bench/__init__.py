"""Benchmarks: ``python -m bench.<name> [--quick]``; one JSON object on the last stdout line."""
