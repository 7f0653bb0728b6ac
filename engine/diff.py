"""Public contract: engine.diff.build_prompt / apply_diff (implemented in engine.tools.diff)."""
from .tools.diff import apply_diff, build_prompt

__all__ = ["apply_diff", "build_prompt"]
