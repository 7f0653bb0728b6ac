"""Tools around the engine: the benchmark harness, diff edits, HumanEval."""
