"""Tiny random checkpoints written with transformers (the correctness oracle) for the tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nimport sys\n\nfor i in range(10):\n    print(i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "while True:\n    if x > 0:\n        break\n    x = x - 1\n",
    "# compute the answer\nresult = [x * x for x in range(100) if x % 2 == 0]\n",
    "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "héllo wörld — ünïcode ✓ 日本語 emoji 🙂\n",
]
EOS = "<|endoftext|>"


def write_tokenizer(path: Path, vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "bos_token": EOS}))
    return tok


def _save(model, path: Path, tok: Tokenizer) -> Path:
    model.save_pretrained(str(path), safe_serialization=True)
    eos = tok.token_to_id(EOS)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "bos_token_id": eos}))
    return path


def _init(model, std: float):
    # Larger than the usual 0.02 so the logits are peaked and greedy choices are not near-ties.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
    return model


def make_codegen(path: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                 rotary_dim: int = 8, n_positions: int = 512, vocab_pad: int = 11) -> Path:
    from transformers import CodeGenConfig, CodeGenForCausalLM
    path.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(path)
    eos = tok.token_to_id(EOS)
    torch.manual_seed(seed)
    cfg = CodeGenConfig(vocab_size=tok.get_vocab_size() + vocab_pad, n_positions=n_positions,
                        n_ctx=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        rotary_dim=rotary_dim, bos_token_id=eos, eos_token_id=eos,
                        tie_word_embeddings=False)
    cfg.architectures = ["CodeGenForCausalLM"]
    return _save(_init(CodeGenForCausalLM(cfg).eval(), 0.15), path, tok)


def make_gpt_neo(path: Path, seed: int = 0, num_layers: int = 3, hidden: int = 48, heads: int = 3,
                 window: int = 16, max_positions: int = 512) -> Path:
    from transformers import GPTNeoForCausalLM
    path.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(path)
    eos = tok.token_to_id(EOS)
    torch.manual_seed(seed)
    cfg = gpt_neo_config(tok.get_vocab_size(), eos, num_layers, hidden, heads, window, max_positions)
    return _save(_init(GPTNeoForCausalLM(cfg).eval(), 0.15), path, tok)


def gpt_neo_config(vocab_size: int, eos: int, num_layers: int, hidden: int, heads: int, window: int,
                   max_positions: int):
    """GPT-Neo config with layers alternating global / local attention, lm_head tied."""
    from transformers import GPTNeoConfig
    kinds = (["global", "local"] * num_layers)[:num_layers]
    cfg = GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=max_positions,
                       hidden_size=hidden, num_layers=num_layers, num_heads=heads,
                       attention_types=[[[k], 1] for k in kinds], window_size=window,
                       bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    cfg.architectures = ["GPTNeoForCausalLM"]
    return cfg


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, sample_vocab: int) -> list[int]:
    """Greedy decoding with transformers, full forward each step, never picking ids >= sample_vocab."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    new: list[int] = []
    for step in range(max_new_tokens):
        new.append(int(out.logits[0, -1, :sample_vocab].argmax()))
        if step + 1 < max_new_tokens:  # the last token is never fed: it may sit past the context
            out = model(torch.tensor([new[-1:]]), past_key_values=out.past_key_values, use_cache=True)
    return new
