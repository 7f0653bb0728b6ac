"""Checkpoint loading: config, sharded safetensors, .bin conversion, and clear errors."""
import io
import json
import re
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.config import load_config
from engine.worker.convert import convert_bin_to_safetensors

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def greedy(path, prompt="def add(a, b):"):
    return LLM(str(path), dtype="float32", attention_backend="torch").generate(prompt, GREEDY)[0].outputs[0].token_ids


def test_config_fields(tiny_gptneo_dir, tiny_codegen_dir):
    neo = load_config(tiny_gptneo_dir)
    assert neo.architecture == "GPTNeoForCausalLM" and neo.attention_scale == 1.0
    assert neo.layer_windows == [0, 16, 0] and neo.tie_word_embeddings and neo.learned_positions
    cg = load_config(tiny_codegen_dir)
    assert cg.architecture == "CodeGenForCausalLM" and cg.rotary_dim == 8 and cg.head_dim == 16
    assert cg.intermediate_size == 4 * cg.hidden_size and not cg.tie_word_embeddings
    assert abs(cg.attention_scale - 16 ** -0.5) < 1e-12


def test_unsupported_architecture(tmp_path, tiny_gptneo_dir):
    path = copy_ckpt(tiny_gptneo_dir, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="LlamaForCausalLM.*supported: GPTNeoForCausalLM, CodeGenForCausalLM"):
        load_config(path)


def test_sharded_checkpoint(tmp_path, tiny_codegen_dir):
    path = copy_ckpt(tiny_codegen_dir, tmp_path / "m")
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(path / file))
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert greedy(path) == greedy(tiny_codegen_dir)


def _bin_checkpoint(src, tiny_dir):
    """tiny_dir as an older Hub checkpoint ships: pytorch_model.bin, tied lm_head included."""
    src.mkdir()
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]  # tied: shared storage
    torch.save(tensors, src / "pytorch_model.bin")
    for f in tiny_dir.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, src / f.name)
    return src


def test_bin_conversion(tmp_path, tiny_gptneo_dir):
    src = _bin_checkpoint(tmp_path / "bin", tiny_gptneo_dir)
    with pytest.raises(ValueError, match="codeinfer convert"):
        load_config(src)  # the loader itself reads safetensors only
    from engine.entrypoints.cli.main import main
    assert main(["convert", str(src), str(tmp_path / "st")]) == 0
    assert greedy(tmp_path / "st") == greedy(tiny_gptneo_dir)


def test_bin_checkpoint_loads_through_a_cached_conversion(tmp_path, tiny_gptneo_dir, monkeypatch):
    from engine.worker import convert
    monkeypatch.setenv("CODEINFER_CACHE_ROOT", str(tmp_path / "cache"))
    src = _bin_checkpoint(tmp_path / "bin", tiny_gptneo_dir)
    assert greedy(src) == greedy(tiny_gptneo_dir)
    (out,) = (tmp_path / "cache" / "converted").iterdir()
    assert (out / convert.MARKER).is_file() and (out / "model.safetensors").is_file()
    calls = []
    monkeypatch.setattr(convert, "convert_bin_to_safetensors",
                        lambda *a: calls.append(a) or convert_bin_to_safetensors(*a))
    LLM(str(src))
    assert calls == []  # reused
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg, indent=2))  # the source changed: redone
    LLM(str(src))
    assert len(calls) == 1 and (out / "config.json").read_text() == (src / "config.json").read_text()


def test_bin_conversion_cache_that_cannot_be_written_is_a_clear_error(tmp_path, tiny_gptneo_dir, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CODEINFER_CACHE_ROOT", str(tmp_path / "file"))
    src = _bin_checkpoint(tmp_path / "bin", tiny_gptneo_dir)
    with pytest.raises(ValueError, match="^model: cannot write the converted checkpoint .*CODEINFER_CACHE_ROOT"):
        LLM(str(src))


def test_bin_conversion_refuses_pickled_code(tmp_path):
    src = tmp_path / "evil"
    src.mkdir()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="plain tensors"):
        convert_bin_to_safetensors(src, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _edit_tensors(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor(tmp_path, tiny_codegen_dir):
    path = copy_ckpt(tiny_codegen_dir, tmp_path / "m")
    _edit_tensors(path, lambda t: t.pop("transformer.h.1.mlp.fc_in.bias"))
    with pytest.raises(ValueError, match=r"missing tensors: \['layers.1.mlp.fc_in.bias'\]"):
        LLM(str(path))


def test_missing_packed_shard(tmp_path, tiny_gptneo_dir):
    path = copy_ckpt(tiny_gptneo_dir, tmp_path / "m")
    _edit_tensors(path, lambda t: t.pop("transformer.h.0.attn.attention.k_proj.weight"))
    with pytest.raises(ValueError, match="missing tensors.*layers.0.attn.qkv_proj.weight"):
        LLM(str(path))


def test_wrong_shape_and_unexpected(tmp_path, tiny_codegen_dir):
    path = copy_ckpt(tiny_codegen_dir, tmp_path / "m")

    def edit(t):
        t["transformer.ln_f.weight"] = torch.ones(7)
        t["transformer.h.0.extra.weight"] = torch.ones(2)
    _edit_tensors(path, edit)
    with pytest.raises(ValueError) as e:
        LLM(str(path))
    assert "transformer.ln_f.weight: checkpoint (7,), model (64,)" in str(e.value)
    assert "unexpected tensors: ['transformer.h.0.extra.weight']" in str(e.value)


def test_truncated_file(tmp_path, tiny_codegen_dir):
    path = copy_ckpt(tiny_codegen_dir, tmp_path / "m")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        LLM(str(path))


def test_missing_pieces(tmp_path):
    with pytest.raises(ValueError, match="model: .*nope' is neither a folder nor a Hugging Face Hub id"):
        LLM(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        LLM(str(tmp_path / "empty"))


@pytest.mark.parametrize("which", ["codegen", "gptneo"])
def test_blocks_prepared_while_loading(tiny_codegen_dir, tiny_gptneo_dir, which):
    # dtype int8 quantises each block as soon as its weights are in (GPT-Neo's q, k, v shards
    # included): once per block, with every weight of the block loaded, and the result is the
    # model quantised after loading.
    from engine.layers.quant import quantize_linears
    from engine.worker.weights import load_model
    from kernels import reference
    path = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    config = load_config(path)
    after = quantize_linears(load_model(config, path, reference, torch.bfloat16, torch.device("cpu")))
    seen = []

    def prepare(block):
        seen.append(block)
        quantize_linears(block)

    streamed = load_model(config, path, reference, torch.bfloat16, torch.device("cpu"), prepare_block=prepare)
    blocks = [b for b in seen if not hasattr(b, "lm_head")]
    assert sorted(map(id, blocks)) == sorted(map(id, streamed.layers))  # each block once
    assert not any(type(m) is torch.nn.Linear for m in streamed.layers.modules())
    # CodeGen's untied lm_head is prepared on its own as soon as it is in (in a holder under its
    # name, so it writes fp32 logits); GPT-Neo's is tied to wte and waits for the end.
    heads = [b for b in seen if hasattr(b, "lm_head")]
    assert len(heads) == (1 if which == "codegen" else 0)
    assert (type(streamed.lm_head) is torch.nn.Linear) == (which == "gptneo")
    quantize_linears(streamed)  # the rest (a tied lm_head); prepared modules are left alone
    expected = after.state_dict()
    for name, value in streamed.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_read_safetensors_matches_the_library(tmp_path):
    # The loader reads .safetensors with plain file reads (no mmap): same tensors as the library, and
    # offsets that leave the file are an error, not a read past it.
    from engine.worker.weights import read_safetensors
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.arange(6, dtype=torch.int64),
               "d": torch.randn(2, 2, 2).half(), "e": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    got = dict(read_safetensors(tmp_path / "x.safetensors"))
    assert got.keys() == tensors.keys()
    for name, t in load_file(str(tmp_path / "x.safetensors")).items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["a"]["data_offsets"][1] += 4  # no longer the size of a [3, 5] fp32 tensor
    bad = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(len(bad).to_bytes(8, "little") + bad + raw[8 + n:])
    with pytest.raises(ValueError, match="data offsets"):
        dict(read_safetensors(tmp_path / "bad.safetensors"))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_loading_shows_progress_on_a_terminal_only(tiny_codegen_dir, monkeypatch, capfd, dtype):
    # A bar over the tensors (int8: while each block is quantised) when a person watches stderr;
    # nothing when it is captured or piped.
    LLM(str(tiny_codegen_dir), dtype=dtype)
    assert capfd.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    LLM(str(tiny_codegen_dir), dtype=dtype)
    num_tensors = len(load_file(str(tiny_codegen_dir / "model.safetensors")))
    assert re.search(rf"Loading weights: 100%.*\b{num_tensors}/{num_tensors}\b", terminal.getvalue())
