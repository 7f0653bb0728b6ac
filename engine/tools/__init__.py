"""Tools around the engine: the benchmark harness, diff edits, HumanEval."""

# How to install the benchmark's optional peers and plotting, from a checkout of the repository.
BENCH_EXTRA = 'pip install -e ".[bench]" torch==2.13.0'
