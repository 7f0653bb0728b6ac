"""EngineArgs: one set of engine options behind LLM, LLMEngine, the CLI and the README's table."""
import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from engine.engine_args import EngineArgs, options_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_option_table_matches_the_fields():
    assert options_table() in README.read_text(), (
        "README.md's engine option table is stale: paste `python -m engine.engine_args`")


def test_cli_defaults_are_the_field_defaults():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    assert EngineArgs.from_cli_args(parser.parse_args([])) == EngineArgs()


def test_cli_flags_set_every_field():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = parser.parse_args(["--model", "m", "--revision", "v1", "--dtype", "int8",
                              "--device", "cpu",
                              "--attention-backend", "torch", "--block-size", "8",
                              "--num-kv-blocks", "64", "--max-num-seqs", "4",
                              "--max-num-batched-tokens", "512", "--max-model-len", "256",
                              "--no-prefix-caching", "--seed", "3",
                              "--kv-cache-dtype", "int8", "--kv-cache-memory", "1MiB", "--threads", "2"])
    assert EngineArgs.from_cli_args(args) == EngineArgs(
        model="m", revision="v1", dtype="int8", device="cpu", attention_backend="torch", block_size=8,
        num_kv_blocks=64, max_num_seqs=4, max_num_batched_tokens=512, max_model_len=256,
        enable_prefix_caching=False,
        seed=3, kv_cache_dtype="int8", kv_cache_memory_bytes=1 << 20, num_threads=2)


def test_served_model_name_takes_every_alias_on_the_cli():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = EngineArgs.from_cli_args(parser.parse_args(["--served-model-name", "a", "b/c", "--seed", "1"]))
    assert args.served_model_name == ["a", "b/c"] and args.served_model_names() == ["a", "b/c"]
    with pytest.raises(SystemExit):  # the flag needs at least one name
        parser.parse_args(["--served-model-name"])


@pytest.mark.parametrize("options, names", [
    ({}, ["codegen-tiny-py"]),                                        # the bundled model's name
    ({"model": "Salesforce/codegen-350M-mono"}, ["Salesforce/codegen-350M-mono"]),  # a Hub id as is
    ({"model": "./ckpt/../models/diff/"}, ["./ckpt/../models/diff/"]),  # a folder as typed
    ({"model": "/m", "served_model_name": "code"}, ["code"]),
    ({"model": "/m", "served_model_name": ("a", "b")}, ["a", "b"]),
])
def test_served_model_names_default_to_the_model_as_given(options, names):
    assert EngineArgs(**options).served_model_names() == names


@pytest.mark.parametrize("value", ["", "  ", [], ["a", ""], [3], 7, {"a": 1}])
def test_bad_served_model_name_is_a_value_error(value):
    with pytest.raises(ValueError, match="served_model_name must be a non-empty name"):
        EngineArgs(served_model_name=value)


def test_every_field_has_help():
    assert all(f.metadata["help"] for f in dataclasses.fields(EngineArgs))


@pytest.mark.parametrize("name, value, message", [
    ("block_size", 0, "block_size must be an integer >= 1, got 0"),
    ("max_num_seqs", 1.5, "max_num_seqs must be an integer >= 1, got 1.5"),
    ("max_num_batched_tokens", None, "max_num_batched_tokens must be an integer >= 1, got None"),
    ("num_kv_blocks", 0, "num_kv_blocks must be a positive integer or None, got 0"),
    ("kv_cache_memory_bytes", -5, "kv_cache_memory_bytes must be a positive integer or None, got -5"),
    ("num_threads", "2", "num_threads must be a positive integer or None, got '2'"),
    ("max_model_len", 0, "max_model_len must be a positive integer or None, got 0"),
])
def test_invalid_values_name_the_argument(name, value, message):
    with pytest.raises(ValueError) as info:
        EngineArgs(**{name: value})
    assert str(info.value) == message


def test_max_model_len_caps_the_model_context():
    assert EngineArgs().resolve_max_model_len(512) == 512
    assert EngineArgs(max_model_len=100).resolve_max_model_len(512) == 100
    assert EngineArgs(max_model_len=512).resolve_max_model_len(512) == 512
    with pytest.raises(ValueError, match=r"^max_model_len \(513\) is above the model's context of 512"):
        EngineArgs(max_model_len=513).resolve_max_model_len(512)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        EngineArgs(max_batch=3)


def test_engine_args_load_no_torch():
    code = "import sys, engine.engine_args; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
