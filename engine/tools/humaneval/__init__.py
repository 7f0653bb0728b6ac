"""HumanEval pass@k: problems, sampling presets, the sandboxed executor and the estimator."""
from engine.tools.humaneval.evaluate import evaluate, execute_samples, generate_samples, score
from engine.tools.humaneval.metrics import mean_pass_at_k, pass_at_k
from engine.tools.humaneval.presets import PRESETS, Preset, get_preset, set_prompt_builder
from engine.tools.humaneval.problems import (STOP_SEQUENCES, check_program, read_problems,
                                       read_samples, truncate_completion, write_samples)
from engine.tools.humaneval.sandbox import ExecResult, run_program, run_programs

__all__ = ["PRESETS", "STOP_SEQUENCES", "ExecResult", "Preset", "check_program", "evaluate",
           "execute_samples", "generate_samples", "get_preset", "mean_pass_at_k", "pass_at_k",
           "read_problems", "read_samples", "run_program", "run_programs", "score",
           "set_prompt_builder", "truncate_completion", "write_samples"]
