"""What importing a part of the package loads: the text tools and the CLI's parser no torch, the
engine core nothing of the entry points or the tools."""
import subprocess
import sys

import engine.diff
import engine.tools.diff


def loads(code: str) -> set[str]:
    """Modules under engine., torch (and its compiler's torch._dynamo and sympy) that `code` leaves
    loaded, in a fresh interpreter."""
    script = (code + "; import sys; print(' '.join(m for m in sys.modules "
                     "if m in ('torch', 'torch._dynamo', 'sympy') or m.startswith('engine.')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_engine_diff_is_the_public_contract():
    assert engine.diff.build_prompt is engine.tools.diff.build_prompt
    assert engine.diff.apply_diff is engine.tools.diff.apply_diff


def test_engine_diff_loads_no_torch():
    assert "torch" not in loads("import engine.diff")


def test_cli_parser_loads_no_torch():
    assert "torch" not in loads("from engine.entrypoints.cli.main import build_parser; build_parser()")


def test_engine_core_loads_no_entrypoints_or_tools():
    loaded = loads("import engine.core.llm_engine")
    assert not {m for m in loaded if m.startswith(("engine.entrypoints", "engine.tools"))}


def test_loading_a_model_skips_torch_compile():
    """Building the model on the meta device runs no init and materialising it no meta refs (the
    checkpoint fills it): torch's meta normal_ and empty_like import torch._dynamo and sympy,
    seconds of start-up."""
    loaded = loads("from engine import LLM; LLM().generate('def')")
    assert "torch" in loaded and not {"torch._dynamo", "sympy"} & loaded
