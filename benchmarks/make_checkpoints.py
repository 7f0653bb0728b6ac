"""Write random-weight checkpoints with the real shapes of CodeGen-350M / 2B / 6B / 16B and
PyCodeGPT-110M (GPT-Neo) for `codeinfer bench`: config.json + safetensors + tokenizer.

    python -m benchmarks.make_checkpoints OUT_DIR [--only codegen-2b] [--std 0.02]

The small ones are built and saved by transformers (fp32). CodeGen-2B / 6B / 16B are written shard by
shard in bf16 (one block a shard, model.safetensors.index.json naming them): never the whole model in
memory (16B in fp32 is 64 GB), half the disk of fp32 (2B: 5.6 GB, 6B: 14 GB, 16B: 32 GB).

The tokenizer is the bundled model's (engine/assets/codegen-tiny-py, 4096 ids) when present, else the
small BPE of tests/checkpoints.py; either is smaller than the model vocabulary, as real CodeGen's is.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

ASSET_TOKENIZER = Path(__file__).resolve().parents[1] / "engine" / "assets" / "codegen-tiny-py"
EOS = "<|endoftext|>"

SHAPES = {
    # Salesforce/codegen-350M-*: 20 layers x 1024, 16 heads, rotary_dim 32, vocab 51200.
    "codegen-350m": dict(arch="codegen", n_layer=20, n_embd=1024, n_head=16, rotary_dim=32,
                         vocab_size=51200, n_positions=2048),
    # Daoguang/PyCodeGPT: GPT-Neo 12 x 768, 12 heads, local window 256, vocab 32000.
    # Salesforce/codegen-{2B,6B,16B}-*: rotary_dim 64, vocab 51200, written shard by shard (bf16).
    "codegen-2b": dict(arch="codegen", n_layer=32, n_embd=2560, n_head=32, rotary_dim=64,
                       vocab_size=51200, n_positions=2048),
    "codegen-6b": dict(arch="codegen", n_layer=33, n_embd=4096, n_head=16, rotary_dim=64,
                       vocab_size=51200, n_positions=2048),
    "codegen-16b": dict(arch="codegen", n_layer=34, n_embd=6144, n_head=24, rotary_dim=64,
                        vocab_size=51200, n_positions=2048),
    "pycodegpt-110m": dict(arch="gpt_neo", num_layers=12, hidden_size=768, num_heads=12,
                           window_size=256, vocab_size=32000, max_position_embeddings=2048),
}


def write_tokenizer(path: Path) -> int:
    """Copy a tokenizer into path; returns its EOS id."""
    if (ASSET_TOKENIZER / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(ASSET_TOKENIZER / name, path / name)
        vocab = json.loads((path / "tokenizer.json").read_text())
        added = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
        return added.get(EOS, vocab["model"]["vocab"].get(EOS, 0))
    from tests.checkpoints import write_tokenizer as write_test_tokenizer
    return write_test_tokenizer(path).token_to_id(EOS)


SHARDED = ("codegen-2b", "codegen-6b", "codegen-16b")


def _codegen_config(shape: dict, eos: int, std: float):
    from transformers import CodeGenConfig
    cfg = CodeGenConfig(n_ctx=shape["n_positions"], bos_token_id=eos, eos_token_id=eos,
                        tie_word_embeddings=False, initializer_range=std, **shape)
    cfg.architectures = ["CodeGenForCausalLM"]
    return cfg


def _block_tensors(i: int, hidden: int, inner: int, std: float, gen: torch.Generator) -> dict:
    """transformers' CodeGen names and init of block i (normal weights, zero biases, unit norms)."""
    def normal(*shape):
        return torch.randn(*shape, generator=gen).mul_(std).to(torch.bfloat16)
    pre = f"transformer.h.{i}."
    zeros = torch.zeros
    return {pre + "ln_1.weight": torch.ones(hidden, dtype=torch.bfloat16),
            pre + "ln_1.bias": zeros(hidden, dtype=torch.bfloat16),
            pre + "attn.qkv_proj.weight": normal(3 * hidden, hidden),
            pre + "attn.out_proj.weight": normal(hidden, hidden),
            pre + "mlp.fc_in.weight": normal(inner, hidden), pre + "mlp.fc_in.bias": zeros(inner, dtype=torch.bfloat16),
            pre + "mlp.fc_out.weight": normal(hidden, inner), pre + "mlp.fc_out.bias": zeros(hidden, dtype=torch.bfloat16)}


def make_sharded(name: str, out: Path, std: float = 0.02, seed: int = 0) -> Path:
    """A big CodeGen shape in bf16, one safetensors shard per block (+ one for the embeddings and
    one for ln_f and lm_head), each freed before the next is made."""
    from safetensors.torch import save_file
    shape = dict(SHAPES[name])
    shape.pop("arch")
    path = out / name
    path.mkdir(parents=True, exist_ok=True)
    eos = write_tokenizer(path)
    _codegen_config(shape, eos, std).to_json_file(str(path / "config.json"))
    hidden, vocab, layers = shape["n_embd"], shape["vocab_size"], shape["n_layer"]
    gen = torch.Generator().manual_seed(seed)
    shards = [("embed", lambda: {"transformer.wte.weight": torch.randn(vocab, hidden, generator=gen)
                                 .mul_(std).to(torch.bfloat16)})]
    shards += [(f"block-{i:02d}", lambda i=i: _block_tensors(i, hidden, 4 * hidden, std, gen)) for i in range(layers)]
    shards.append(("head", lambda: {
        "transformer.ln_f.weight": torch.ones(hidden, dtype=torch.bfloat16),
        "transformer.ln_f.bias": torch.zeros(hidden, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(vocab, hidden, generator=gen).mul_(std).to(torch.bfloat16),
        "lm_head.bias": torch.zeros(vocab, dtype=torch.bfloat16)}))
    weight_map, total = {}, 0
    for i, (label, build) in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = build()
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "bos_token_id": eos}))
    return path


def make(name: str, out: Path, std: float = 0.02, seed: int = 0) -> Path:
    if name in SHARDED:
        return make_sharded(name, out, std, seed)
    from transformers import CodeGenForCausalLM, GPTNeoConfig, GPTNeoForCausalLM
    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    path = out / name
    path.mkdir(parents=True, exist_ok=True)
    eos = write_tokenizer(path)
    torch.manual_seed(seed)
    if arch == "codegen":
        model = CodeGenForCausalLM(_codegen_config(shape, eos, std))
    else:
        n = shape["num_layers"]
        cfg = GPTNeoConfig(attention_types=[[["global", "local"], n // 2]], bos_token_id=eos,
                           eos_token_id=eos, initializer_range=std, **shape)
        cfg.architectures = ["GPTNeoForCausalLM"]
        model = GPTNeoForCausalLM(cfg)
    model.eval().save_pretrained(str(path), safe_serialization=True)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "bos_token_id": eos}))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder that receives one sub-folder per model")
    p.add_argument("--only", choices=sorted(SHAPES), default=None,
                   help="one shape (default: the small ones; the CodeGen-2B/6B/16B shapes only by name)")
    p.add_argument("--std", type=float, default=0.02, help="normal init std of the weight matrices")
    args = p.parse_args()
    for name in [args.only] if args.only else sorted(set(SHAPES) - set(SHARDED)):  # big ones: --only
        print(make(name, args.out, args.std))


if __name__ == "__main__":
    main()
