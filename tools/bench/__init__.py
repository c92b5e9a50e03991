"""The cross-method harness (`python -m tools.bench`; README.md says how to read its evidence tables) and
the prepared GPU run (`python -m tools.bench.gpu`). Each package's micro-benchmarks live beside it."""
