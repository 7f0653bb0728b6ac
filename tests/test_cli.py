"""The codeinfer console script: help texts, generate (plain and streamed), clear errors."""
import pytest

from engine.cli import COMMANDS, build_parser, main


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
    assert f"{row['tok_s']:.1f} ({min(runs):.1f}-{max(runs):.1f})" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_codegen_dir), "--repeat", "0"]) == 2
    assert "repeat" in capsys.readouterr().err
