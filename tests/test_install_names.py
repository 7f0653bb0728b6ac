"""The installed import names: `codeinfer.engine` and `codeinfer.kernels`, never top-level `engine`
or `kernels` (generic names another distribution may own). Run in fresh interpreters outside the
checkout, so only what the install provides is importable."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_installed(tmp_path: Path, code: str) -> str:
    """`code` in a fresh interpreter whose working directory is not the checkout."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_install_provides_no_generic_top_level_names(tmp_path):
    found = json.loads(run_installed(tmp_path, (
        "import importlib.util, json\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None "
        "for n in ('engine', 'kernels', 'codeinfer.engine', 'codeinfer.kernels')}))")))
    assert found == {"engine": False, "kernels": False, "codeinfer.engine": True,
                     "codeinfer.kernels": True}, "reinstall: pip install -e . (make setup)"


def test_every_module_imports_under_the_installed_name(tmp_path):
    """An absolute `engine.` / `kernels.` import anywhere would fail here (relative imports inside
    each package; the engine reaches the kernels through engine/kernel_package.py)."""
    names = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                   for top in ("engine", "kernels") for p in (REPO / top).rglob("*.py"))
    assert "engine.kernel_package" in names and "kernels.cpu" in names
    out = json.loads(run_installed(tmp_path, (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module('codeinfer.' + name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'kernels'))))")))
    assert out == []


def test_installed_library_generates_like_the_checkout(tmp_path):
    from engine import LLM, SamplingParams
    params = dict(temperature=0, max_tokens=12)
    expected = LLM().generate("def add(a, b):", SamplingParams(**params))[0].outputs[0].token_ids
    got = json.loads(run_installed(tmp_path, (
        "import json\n"
        "from codeinfer.engine import LLM, SamplingParams\n"
        "llm = LLM()\n"
        f"out = llm.generate('def add(a, b):', SamplingParams(**{params!r}))[0].outputs[0]\n"
        "print(json.dumps([out.token_ids, llm.engine.runner.ops.__name__]))")))
    assert got == [list(expected), "codeinfer.kernels.cpu"]


def test_console_script_runs_the_installed_package(tmp_path):
    script = Path(sys.executable).with_name("codeinfer")
    if not script.exists():
        pytest.fail(f"no console script at {script}: pip install -e . (make setup)")
    text = script.read_text()
    assert "from codeinfer.engine.entrypoints.cli.main import main" in text
    proc = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("codeinfer "), proc.stderr
