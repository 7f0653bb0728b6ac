"""The codeinfer console script: help texts, generate (plain and streamed), clear errors."""
import os
import subprocess
import sys

import pytest

from engine.entrypoints.cli.main import COMMANDS, build_parser, main


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0
        assert "usage: codeinfer " + name in capsys.readouterr().out


def test_generate_stream_equals_plain(tiny_codegen_dir, capsys):
    args = ["generate", "--model", str(tiny_codegen_dir), "--dtype", "float32", "--max-tokens", "12",
            "def add(a, b):"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--stream"]) == 0
    streamed = capsys.readouterr().out
    assert plain.startswith("def add(a, b):") and len(plain) > len("def add(a, b):\n")
    assert streamed == plain


def test_generate_bad_input_is_one_clear_line(tiny_codegen_dir, capsys):
    assert main(["generate", "--model", str(tiny_codegen_dir), "--temperature", "-1", "x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "codeinfer generate: error: temperature must be >= 0, got -1.0"


def test_bench_repeat_keeps_the_median_run(tiny_codegen_dir, tmp_path, capsys):
    # Every configuration runs --repeat times in its own process; the row is the median run's.
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_codegen_dir), "--concurrency", "1", "--max-tokens", "3",
                 "--repeat", "3", "--json", str(out), "--num-kv-blocks", "32"]) == 0
    import json
    (row,) = json.loads(out.read_text())["rows"]
    runs = row["tok_s_runs"]
    assert len(runs) == 3 and row["tok_s"] == sorted(runs)[1]
    # Each process's load time, from its start to the first run: positive and under the wall time.
    assert all(0 < r["load_s"] < 120 for r in row["runs"]) and row["load_s"] > 0
    assert f"{row['tok_s']:.1f} ({min(runs):.1f}-{max(runs):.1f})" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_codegen_dir), "--repeat", "0"]) == 2
    assert "repeat" in capsys.readouterr().err


def _bad_checkpoint(src, dst, **edits):
    import json
    import shutil
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(edits)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_checkpoint_is_one_line_and_no_traceback(tiny_codegen_dir, tmp_path):
    # The real console script in its own process: exit status and the whole of stderr.
    import subprocess
    import sys
    bad = _bad_checkpoint(tiny_codegen_dir, tmp_path / "bad", n_head=0)
    proc = subprocess.run([sys.executable, "-m", "engine.entrypoints.cli.main", "generate", "--model", str(bad), "x"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("codeinfer generate: error: ") and "config.json" in line and "'n_head'" in line


@pytest.mark.parametrize("command", ["generate", "bench", "convert"])
def test_loading_errors_print_one_line(tiny_codegen_dir, tmp_path, capsys, command):
    # generate: a tokenizer.json that is not one; bench: a config that disagrees with the weights;
    # convert: a needed file linking out of the source folder.
    if command == "generate":
        bad = _bad_checkpoint(tiny_codegen_dir, tmp_path / "bad")
        (bad / "tokenizer.json").write_text("{}")
        argv, needle = ["generate", "--model", str(bad), "x"], "tokenizer.json"
    elif command == "bench":
        bad = _bad_checkpoint(tiny_codegen_dir, tmp_path / "bad", n_layer=3)
        argv, needle = ["bench", "--model", str(bad), "--concurrency", "1"], "missing tensors"
    else:
        import torch
        (tmp_path / "src").mkdir()
        torch.save({"w": torch.ones(2)}, tmp_path / "src" / "pytorch_model.bin")
        (tmp_path / "src" / "config.json").symlink_to("/etc/passwd")
        argv, needle = ["convert", str(tmp_path / "src"), str(tmp_path / "dst")], "outside"
    capsys.readouterr()
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"codeinfer {command}: error: ") and needle in line


@pytest.mark.parametrize("env, expected", [({}, "1000"), ({"GOMP_SPINCOUNT": "5"}, "5"),
                                           ({"OMP_WAIT_POLICY": "ACTIVE"}, None)])
def test_openmp_spin_default_yields_on_a_shared_cpu(env, expected):
    """Importing the engine before torch caps libgomp's barrier spinning, unless the user chose."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, engine, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(expected)
