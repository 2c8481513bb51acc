"""``python -m benchmarks``: the benchmark suite (implemented in ``budgetkit.bench``)."""
