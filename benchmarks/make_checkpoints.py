"""Write random-weight checkpoints with the real shapes of CodeGen-350M and PyCodeGPT-110M (GPT-Neo)
for `codeinfer bench`: config.json + model.safetensors (fp32) + tokenizer, written by transformers.

    python benchmarks/make_checkpoints.py OUT_DIR [--only codegen-350m|pycodegpt-110m] [--std 0.02]

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


def make(name: str, out: Path, std: float = 0.02, seed: int = 0) -> Path:
    from transformers import (CodeGenConfig, CodeGenForCausalLM, GPTNeoConfig,
                              GPTNeoForCausalLM)
    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    path = out / name
    path.mkdir(parents=True, exist_ok=True)
    eos = write_tokenizer(path)
    torch.manual_seed(seed)
    if arch == "codegen":
        cfg = CodeGenConfig(n_ctx=shape["n_positions"], bos_token_id=eos, eos_token_id=eos,
                            tie_word_embeddings=False, initializer_range=std, **shape)
        cfg.architectures = ["CodeGenForCausalLM"]
        model = CodeGenForCausalLM(cfg)
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
    p.add_argument("--only", choices=sorted(SHAPES), default=None)
    p.add_argument("--std", type=float, default=0.02, help="normal init std of the weight matrices")
    args = p.parse_args()
    for name in [args.only] if args.only else sorted(SHAPES):
        print(make(name, args.out, args.std))


if __name__ == "__main__":
    main()
