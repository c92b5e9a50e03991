"""The cross-method benchmark harness (python -m tools.bench) and micro-benchmarks (bench_*.py)."""
