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
