"""A tiny CodeCLM checkpoint, built the way the authors built theirs (text2code_mrpt):

special tokens added first; then, for each Python string, bare and with the BPE space prefix, a twin
`[_DUP_]tok` appended as an added token (a string missing from the vocabulary is appended itself
first); the embedding resized, each twin row initialised as a copy of its original (then perturbed,
standing in for training); lm_head tied to wte; replicated_tokens_map.pkl = {text id: code id}."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer

from tests.checkpoints import EOS, gpt_neo_config, write_tokenizer

SPECIAL = ["<eot>", "<pad>", "<python>", "<comments>", "<NEW_LINE>", "<INDENT>", "<DEDENT>",
           "<|beginoftext|>"]
# The authors separate ~350 strings; these are the ones this tiny BPE has (and "lambda", which it
# lacks, so the "append the string too" branch is exercised).
SEPARATED = ["def", "return", "if", "for", "in", "while", "import", "class", "self", "print",
             "range", "(", ")", ":", "=", "+", "-", "*", "lambda"]


def add_twins(tok: Tokenizer) -> dict[int, int]:
    """Append the twins to `tok` like the authors; returns {text id: code id}."""
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    vocab = tok.get_vocab(with_added_tokens=True)
    extra = sorted({s for t in SEPARATED for s in (t, "Ġ" + t)})
    new_tokens, twins, next_id = [], {}, len(vocab)
    for s in extra:
        if s in vocab:
            new_tokens.append("[_DUP_]" + s)
            twins[vocab[s]] = next_id
            next_id += 1
        else:
            new_tokens += [s, "[_DUP_]" + s]
            twins[next_id] = next_id + 1
            next_id += 2
    tok.add_tokens([AddedToken(t, normalized=False) for t in new_tokens])
    for text_id, code_id in twins.items():
        assert tok.id_to_token(code_id) == "[_DUP_]" + tok.id_to_token(text_id)
    return twins


def make_codeclm(path: Path, seed: int = 0, num_layers: int = 2, hidden: int = 48, heads: int = 3,
                 window: int = 16, max_positions: int = 256, perturb: float = 0.1) -> Path:
    from transformers import GPTNeoForCausalLM
    path.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(path)
    twins = add_twins(tok)
    tok.save(str(path / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    torch.manual_seed(seed)
    cfg = gpt_neo_config(tok.get_vocab_size(), eos, num_layers, hidden, heads, window, max_positions)
    model = GPTNeoForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # peaked logits: greedy choices are not near-ties
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
        wte = model.transformer.wte.weight
        for text_id, code_id in twins.items():
            wte[code_id] = wte[text_id] + perturb * torch.randn(hidden)
    assert model.lm_head.weight.data_ptr() == wte.data_ptr()
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "bos_token_id": eos}))
    with open(path / "replicated_tokens_map.pkl", "wb") as f:
        pickle.dump(twins, f)
    return path
