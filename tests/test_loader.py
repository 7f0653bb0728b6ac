"""Checkpoint loading: config, sharded safetensors, .bin conversion, and clear errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.config import load_config
from engine.weights import convert_bin_to_safetensors

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


def test_bin_conversion(tmp_path, tiny_gptneo_dir):
    src = tmp_path / "bin"
    src.mkdir()
    tensors = load_file(str(tiny_gptneo_dir / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]  # tied: shared storage
    torch.save(tensors, src / "pytorch_model.bin")
    for f in tiny_gptneo_dir.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, src / f.name)
    with pytest.raises(ValueError, match="codeinfer convert"):
        LLM(str(src))
    from engine.cli import main
    assert main(["convert", str(src), str(tmp_path / "st")]) == 0
    assert greedy(tmp_path / "st") == greedy(tiny_gptneo_dir)


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
    with pytest.raises(ValueError, match="not a directory"):
        LLM(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        LLM(str(tmp_path / "empty"))
