"""Benchmarks: figures beside same-run baselines. Run with `make bench` or `python -m bench.<name>`."""
