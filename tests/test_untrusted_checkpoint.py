"""A checkpoint folder is untrusted input: every hostile config, index, header or tokenizer file is a
ValueError naming the file and the field, raised quickly and before anything is allocated."""
import json
import resource
import shutil
import time
import tracemalloc

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM
from engine.config import load_config


class _Delete:
    def __repr__(self):
        return "DELETE"


DELETE = _Delete()  # as a config.json edit: remove the field
NAN, INF = float("nan"), float("inf")

# (field named in the error, edits to config.json); tiny CodeGen: n_embd 64, n_head 4, rotary_dim 8.
CODEGEN_CONFIGS = [
    ("n_layer", {"n_layer": 10 ** 9}), ("n_embd", {"n_embd": 10 ** 6}),
    ("n_positions", {"n_positions": 10 ** 12}), ("n_head", {"n_head": 0}), ("n_head", {"n_head": -4}),
    ("n_embd", {"n_embd": -64}), ("n_embd", {"n_embd": "64"}), ("n_layer", {"n_layer": True}),
    ("n_layer", {"n_layer": 2.0}), ("n_layer", {"n_layer": None}), ("n_embd", {"n_embd": DELETE}),
    ("n_head", {"n_head": 3}), ("n_embd", {"n_embd": 66, "n_head": 3}),
    ("rotary_dim", {"rotary_dim": 7}), ("rotary_dim", {"rotary_dim": 32}),
    ("rotary_dim", {"rotary_dim": -8}), ("rotary_dim", {"rotary_dim": 0}),
    ("n_positions", {"n_head": 1, "rotary_dim": 64, "n_positions": 1 << 20}),  # 256 MB rotary table
    ("n_ctx", {"n_ctx": "2048"}),
    ("vocab_size", {"vocab_size": 0}), ("vocab_size", {"vocab_size": 10 ** 10}),
    ("vocab_size", {"vocab_size": [331]}),
    *[("layer_norm_epsilon", {"layer_norm_epsilon": eps}) for eps in (0, -1e-5, NAN, INF, "1e-5", 2.0)],
    ("activation_function", {"activation_function": "swish"}),
    ("activation_function", {"activation_function": 7}),
    ("n_inner", {"n_inner": 0}), ("n_inner", {"n_inner": 10 ** 9}),
    ("tie_word_embeddings", {"tie_word_embeddings": "yes"}),
    ("architectures", {"architectures": "CodeGenForCausalLM"}), ("architectures", {"architectures": 5}),
    ("eos_token_id", {"eos_token_id": -1}), ("pad_token_id", {"pad_token_id": [True]}),
    ("bos_token_id", {"bos_token_id": 331}),
]
# Tiny GPT-Neo: hidden 48, 3 heads, 3 layers (global, local, global), window 16.
GPTNEO_CONFIGS = [
    ("num_layers", {"num_layers": 10 ** 9}), ("hidden_size", {"hidden_size": 10 ** 6}),
    ("max_position_embeddings", {"max_position_embeddings": 10 ** 12}),
    ("max_position_embeddings", {"max_position_embeddings": DELETE}),
    ("num_heads", {"num_heads": 0}), ("num_heads", {"hidden_size": 50}),
    ("window_size", {"window_size": 0}), ("window_size", {"window_size": "16"}),
    ("attention_types", {"attention_types": [[["global", "local"], 10 ** 12]]}),
    ("attention_types", {"attention_types": "global"}),
    ("attention_types", {"attention_types": [[["global"], 1]]}),
    ("attention_types", {"attention_types": [[["sparse"], 3]]}),
    ("attention_types", {"attention_types": [[[1], 3]]}),
    ("attention_types", {"attention_types": [[["global"], True], [["local"], 2]]}),
    ("attention_layers", {"attention_layers": ["global"]}),
    ("attention_layers", {"attention_layers": ["local", "local", "local"]}),
    ("intermediate_size", {"intermediate_size": -1}),
    ("tie_word_embeddings", {"tie_word_embeddings": 1}),
    ("layer_norm_epsilon", {"layer_norm_epsilon": [1e-5]}),
]
# (file, text): config files that are not a JSON object of the right kind.
BAD_FILES = [
    ("config.json", "[1, 2]"), ("config.json", '"CodeGenForCausalLM"'), ("config.json", "{not json"),
    ("config.json", "[" * 100000), ("config.json", b"\xff\xfe{}"),
    ("generation_config.json", "[0]"), ("generation_config.json", '{"eos_token_id": 1000000000}'),
    ("generation_config.json", '{"bos_token_id": "0"}'),
    ("tokenizer.json", b"\x00garbage\xff"), ("tokenizer.json", '{"a": 1}'), ("tokenizer.json", "[]"),
    ("tokenizer_config.json", "[]"), ("tokenizer_config.json", '{"eos_token": 5}'),
    ("tokenizer_config.json", '{"eos_token": {"content": ["<|endoftext|>"]}}'),
]
# model.safetensors.index.json files: each must name that file and its weight_map field.
BAD_INDEXES = [
    {}, {"weight_map": []}, {"weight_map": {}}, {"weight_map": {"transformer.wte.weight": 5}},
    {"weight_map": {"transformer.wte.weight": "../outside.safetensors"}},
    {"weight_map": {"transformer.wte.weight": "/etc/passwd"}},
]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


def _refusal(path) -> str:
    with pytest.raises(ValueError) as e:
        LLM(str(path), dtype="float32", attention_backend="torch")
    return str(e.value)


def refused(path, *needles: str) -> str:
    """LLM(path) raises a one-line ValueError containing every needle: in under a second with no
    new resident-memory peak past 256 MiB, and (a second, traced call: tracemalloc slows it down)
    with under 64 MiB of Python allocations."""
    rss, start = _peak_rss(), time.perf_counter()
    message = _refusal(path)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        _refusal(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(n in message for n in needles) and "\n" not in message, (needles, message)
    assert elapsed < 1.0 and peak < 64 << 20 and _peak_rss() - rss < 256 << 20, (elapsed, peak)
    return message


@pytest.fixture(scope="module", autouse=True)
def _warm(tiny_codegen_dir, tiny_gptneo_dir):
    load_config(tiny_codegen_dir)  # the first meta-device init imports torch._dynamo: seconds, once
    load_config(tiny_gptneo_dir)


def _copy(src, tmp_path, config_edits=None):
    path = tmp_path / "m"
    shutil.copytree(src, path)
    if config_edits:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(config_edits)
        cfg = {key: value for key, value in cfg.items() if value is not DELETE}
        (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("field,edits", CODEGEN_CONFIGS, ids=lambda v: str(v)[:40])
def test_hostile_codegen_config(tmp_path, tiny_codegen_dir, field, edits):
    refused(_copy(tiny_codegen_dir, tmp_path, edits), "config.json", repr(field))


@pytest.mark.parametrize("field,edits", GPTNEO_CONFIGS, ids=lambda v: str(v)[:40])
def test_hostile_gptneo_config(tmp_path, tiny_gptneo_dir, field, edits):
    refused(_copy(tiny_gptneo_dir, tmp_path, edits), "config.json", repr(field))


@pytest.mark.parametrize("name,text", BAD_FILES, ids=lambda v: str(v)[:30])
def test_bad_file(tmp_path, tiny_codegen_dir, name, text):
    path = _copy(tiny_codegen_dir, tmp_path)
    (path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(path, name)


@pytest.mark.parametrize("index", BAD_INDEXES, ids=str)
def test_bad_shard_index(tmp_path, tiny_codegen_dir, index):
    path = _copy(tiny_codegen_dir, tmp_path)
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(path, "model.safetensors.index.json", "'weight_map'")


def test_shard_index_that_is_a_list(tmp_path, tiny_codegen_dir):
    path = _copy(tiny_codegen_dir, tmp_path)
    (path / "model.safetensors.index.json").write_text("[]")
    refused(path, "model.safetensors.index.json", "JSON object")


# Configs valid on their own whose sizes disagree with the weights present: refused from the
# headers, before the 26B-parameter model of the first is allocated.
@pytest.mark.parametrize("which,edits,what", [
    ("codegen", {"n_embd": 8192, "n_head": 64, "n_layer": 32}, "wrong shapes"),
    ("codegen", {"n_layer": 4}, "missing tensors"), ("codegen", {"n_layer": 1}, "unexpected tensors"),
    ("codegen", {"vocab_size": 1 << 22}, "transformer.wte.weight: checkpoint (331, 64), model (4194304, 64)"),
    ("codegen", {"n_inner": 1024}, "wrong shapes"),
    ("gptneo", {"max_position_embeddings": 1 << 20}, "transformer.wpe.weight"),
    ("gptneo", {"tie_word_embeddings": False}, "missing tensors: ['lm_head.weight']"),
])
def test_config_disagrees_with_weights(tmp_path, tiny_codegen_dir, tiny_gptneo_dir, which, edits, what):
    src = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    refused(_copy(src, tmp_path, edits), "does not match its config.json", what)


def _rewrite(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_integer_weights_are_refused(tmp_path, tiny_codegen_dir):
    path = _copy(tiny_codegen_dir, tmp_path)
    _rewrite(path, lambda t: t.__setitem__("transformer.ln_f.weight", torch.ones(64, dtype=torch.int32)))
    refused(path, "not floating-point: ['transformer.ln_f.weight: torch.int32']")


def test_tensor_in_two_shards(tmp_path, tiny_codegen_dir):
    path = _copy(tiny_codegen_dir, tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    save_file(tensors, str(path / "a.safetensors"))
    save_file({"transformer.ln_f.weight": tensors["transformer.ln_f.weight"]}, str(path / "b.safetensors"))
    weight_map = dict.fromkeys(tensors, "a.safetensors") | {"transformer.ln_f.weight": "b.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(path, "b.safetensors", "transformer.ln_f.weight")


@pytest.mark.parametrize("header", [b"[]", b"[" * 100000, b'{"a": {"dtype": ["F32"], "shape": [1], '
                                    b'"data_offsets": [0, 4]}}', b'{"a": {"dtype": "F32", "shape": [1], '
                                    b'"data_offsets": [0, 4, 8]}}', b'{"a": {"dtype": "F32", "shape": '
                                    b'[true], "data_offsets": [0, 4]}}'], ids=lambda h: h[:20].decode())
def test_hostile_safetensors_header(tmp_path, tiny_codegen_dir, header):
    path = _copy(tiny_codegen_dir, tmp_path)
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    refused(path, "model.safetensors", "truncated or corrupt")


def test_sparse_giant_header_is_not_read(tmp_path, tiny_codegen_dir):
    # 1 GiB header size in a sparse 1 GiB file: refused from its size, never read into memory.
    path = _copy(tiny_codegen_dir, tmp_path)
    with open(path / "model.safetensors", "wb") as f:
        f.write((1 << 30).to_bytes(8, "little"))
        f.truncate((1 << 30) + 8)
    refused(path, "model.safetensors", "limit")


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer.json",
                                  "tokenizer_config.json"])
def test_sparse_giant_file_is_not_read(tmp_path, tiny_codegen_dir, name):
    path = _copy(tiny_codegen_dir, tmp_path)
    with open(path / name, "wb") as f:
        f.truncate(1 << 30)
    refused(path, name, "bytes")


def _gpt2_files(path):
    """Replace tokenizer.json by the vocab.json + merges.txt of the same BPE."""
    from tokenizers import Tokenizer
    Tokenizer.from_file(str(path / "tokenizer.json")).model.save(str(path))
    (path / "tokenizer.json").unlink()


@pytest.mark.parametrize("name,text", [
    ("vocab.json", "{broken"), ("merges.txt", "\0\0\0"), ("added_tokens.json", "[1]"),
    ("added_tokens.json", '{"<x>": "5"}'), ("tokenizer_config.json", '{"added_tokens_decoder": {"x": {}}}'),
], ids=str)
def test_bad_gpt2_tokenizer_files(tmp_path, tiny_codegen_dir, name, text):
    path = _copy(tiny_codegen_dir, tmp_path)
    _gpt2_files(path)
    (path / name).write_text(text)
    refused(path, name)


def test_gpt2_tokenizer_files_still_load(tmp_path, tiny_codegen_dir):
    from engine.tokenizer import Tokenizer
    path = _copy(tiny_codegen_dir, tmp_path)
    _gpt2_files(path)
    assert Tokenizer(path).encode("def add(a, b):") == Tokenizer(tiny_codegen_dir).encode("def add(a, b):")


# ------------------------------------------------------------------------- codeinfer convert
SECRET = b"root:$6$not-for-copying:19000:0:99999:7:::"


def _bin_source(tmp_path, tiny_gptneo_dir):
    """A .bin checkpoint folder (as the Hub ships older models) and a secret file outside it."""
    src = tmp_path / "src"
    src.mkdir()
    torch.save(load_file(str(tiny_gptneo_dir / "model.safetensors")), src / "pytorch_model.bin")
    for f in tiny_gptneo_dir.glob("*.json"):
        shutil.copy(f, src / f.name)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "shadow").write_bytes(SECRET)
    return src


def _contents(folder) -> bytes:
    return b"".join(f.read_bytes() for f in folder.rglob("*") if f.is_file())


def test_convert_copies_only_checkpoint_files(tmp_path, tiny_gptneo_dir):
    from engine.worker.convert import convert_bin_to_safetensors
    src = _bin_source(tmp_path, tiny_gptneo_dir)
    (src / "secret.json").symlink_to(tmp_path / "outside" / "shadow")
    (src / "notes.txt").write_bytes(SECRET)  # not a checkpoint file: not copied either
    (src / "replicated_tokens_map.pkl").write_bytes(b"\x80\x04}\x94.")  # CodeCLM's map: {}
    dst = tmp_path / "dst"
    convert_bin_to_safetensors(src, dst)
    assert sorted(f.name for f in dst.iterdir()) == sorted(
        ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "replicated_tokens_map.pkl"])
    assert SECRET not in _contents(dst)
    assert load_config(dst).num_layers == 3


@pytest.mark.parametrize("name", ["tokenizer.json", "pytorch_model.bin"])
def test_convert_refuses_links_out_of_the_source(tmp_path, tiny_gptneo_dir, name):
    from engine.worker.convert import convert_bin_to_safetensors
    src = _bin_source(tmp_path, tiny_gptneo_dir)
    (src / name).unlink()
    (src / name).symlink_to(tmp_path / "outside" / "shadow")
    with pytest.raises(ValueError, match=f"{name} resolves to .*outside"):
        convert_bin_to_safetensors(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()  # refused before anything is written


def test_convert_follows_links_inside_a_hub_snapshot(tmp_path, tiny_gptneo_dir):
    # The Hugging Face cache: <repo>/snapshots/<rev>/<file> -> ../../blobs/<hash>.
    from engine.worker.convert import convert_bin_to_safetensors
    plain = _bin_source(tmp_path, tiny_gptneo_dir)
    repo = tmp_path / "models--x--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in plain.iterdir():
        shutil.move(f, repo / "blobs" / f.name)
        (snapshot / f.name).symlink_to(f"../../blobs/{f.name}")
    written = convert_bin_to_safetensors(snapshot, tmp_path / "dst")
    assert {p.name for p in written} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert not any(p.is_symlink() for p in written)


def test_convert_never_widens_permissions(tmp_path, tiny_gptneo_dir):
    from engine.worker.convert import convert_bin_to_safetensors
    src = _bin_source(tmp_path, tiny_gptneo_dir)
    (src / "pytorch_model.bin").chmod(0o600)
    (src / "config.json").chmod(0o640)
    (src / "tokenizer.json").chmod(0o600)
    dst = tmp_path / "dst"
    convert_bin_to_safetensors(src, dst)
    modes = {f.name: f.stat().st_mode & 0o777 for f in dst.iterdir()}
    assert modes["model.safetensors"] & 0o077 == 0 and modes["tokenizer.json"] & 0o077 == 0
    assert modes["config.json"] & ~0o640 == 0


def test_convert_writes_no_file_through_a_link_in_the_destination(tmp_path, tiny_gptneo_dir):
    from engine.worker.convert import convert_bin_to_safetensors
    src = _bin_source(tmp_path, tiny_gptneo_dir)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "model.safetensors").symlink_to(tmp_path / "outside" / "shadow")
    (dst / "config.json").symlink_to(tmp_path / "outside" / "created")  # dangling
    convert_bin_to_safetensors(src, dst)
    assert (tmp_path / "outside" / "shadow").read_bytes() == SECRET
    assert not (tmp_path / "outside" / "created").exists()
    assert not (dst / "model.safetensors").is_symlink()


def test_convert_refuses_a_bin_that_is_not_a_dict(tmp_path):
    from engine.worker.convert import convert_bin_to_safetensors
    (tmp_path / "src").mkdir()
    torch.save([torch.ones(2)], tmp_path / "src" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds a list"):
        convert_bin_to_safetensors(tmp_path / "src", tmp_path / "dst")


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile pytorch_model.bin does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))


def test_a_bin_whose_pickle_runs_code_is_refused_without_running_it(tmp_path, tiny_gptneo_dir, monkeypatch):
    # LLM converts a .bin-only folder on the fly: with torch's weights_only unpickler, which
    # refuses the os.system global before calling anything.
    monkeypatch.setenv("CODEINFER_CACHE_ROOT", str(tmp_path / "cache"))
    src = _bin_source(tmp_path, tiny_gptneo_dir)
    ran = tmp_path / "ran"
    state = load_file(str(tiny_gptneo_dir / "model.safetensors"))
    torch.save({**state, "transformer.wte.weight": _RunsCode(f"touch {ran}")}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot load .*pytorch_model.bin as plain tensors"):
        LLM(str(src))
    assert not ran.exists()
    assert not any((tmp_path / "cache").rglob("*.safetensors"))  # nothing converted or left
    torch.load(src / "pytorch_model.bin", weights_only=False)  # the payload is live: it runs here
    assert ran.exists()
