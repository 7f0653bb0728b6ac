"""csrc compiles for the CPUs this machine is not: plain x86-64 (the portable scalar paths) and
AVX-512 with VNNI and BF16 (the vpdpbusd / vdpbf16ps paths). The build here runs only this CPU's
own path (-march=native), so a vector-only helper used outside its #if guard would otherwise
reach users first. Syntax and template instantiation only (-fsyntax-only), no object code."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
TARGETS = ["x86-64", "sapphirerapids"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
@pytest.mark.parametrize("march", TARGETS)
def test_csrc_compiles_for(march):
    pybind11 = pytest.importorskip("pybind11")
    includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    failures = []
    for source in sorted(CSRC.glob("*.cpp")):
        proc = subprocess.run(["g++", "-std=c++17", "-fopenmp", "-fsyntax-only", f"-march={march}", *includes,
                               str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "error" in line]
            failures.append(f"{source.name}: {errors[:3]}")
    assert not failures, f"-march={march} on {sys.platform}:\n" + "\n".join(failures)
