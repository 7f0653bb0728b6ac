"""HumanEval pass@k: problems, sampling presets, the sandboxed executor and the estimator."""
from .evaluate import evaluate, execute_samples, generate_samples, score
from .metrics import mean_pass_at_k, pass_at_k
from .presets import PRESETS, Preset, get_preset, set_prompt_builder
from .problems import (STOP_SEQUENCES, check_program, read_problems,
                                       read_samples, truncate_completion, write_samples)
from .sandbox import ExecResult, run_program, run_programs

__all__ = ["PRESETS", "STOP_SEQUENCES", "ExecResult", "Preset", "check_program", "evaluate",
           "execute_samples", "generate_samples", "get_preset", "mean_pass_at_k", "pass_at_k",
           "read_problems", "read_samples", "run_program", "run_programs", "score",
           "set_prompt_builder", "truncate_completion", "write_samples"]
