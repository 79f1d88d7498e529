"""secagg's benchmarks (not tests): ``python -m benchmarks`` from the repository root.

Each benchmark writes its own section to ``benchmarks/results/<name>.md``; the runner
(``benchmarks/__main__.py``) concatenates them into ``benchmarks/RESULTS.md``.
"""
