"""Tokenizer loading (tokenizer.json and GPT-2 vocab/merges) and streaming detokenisation."""
import json

from engine.tokenizer import IncrementalDetokenizer, Tokenizer

TEXT = "def f(x):\n    return 'héllo ✓ 日本語 🙂' + str(x)  # done\n"


def test_round_trip(tiny_codegen_dir):
    tok = Tokenizer(tiny_codegen_dir)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.eos_token_id == tok.token_to_id("<|endoftext|>")
    assert len(tok) == len(tok.vocab)


def test_streaming_never_emits_half_characters(tiny_codegen_dir):
    tok = Tokenizer(tiny_codegen_dir)
    ids = tok.encode(TEXT)
    # The byte-level vocab is small: multi-byte characters span several tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tok, tok.encode("# prompt\n"))
    pieces = [detok.add(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == TEXT == detok.text


def test_gpt2_vocab_and_merges_with_added_tokens(tmp_path, tiny_codegen_dir):
    data = json.loads((tiny_codegen_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    merges = data["model"]["merges"]
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    n = len(vocab)
    # CodeGen style: whitespace runs as added tokens after the BPE vocabulary.
    (tmp_path / "added_tokens.json").write_text(json.dumps({"    ": n, "        ": n + 1}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = Tokenizer(tmp_path)
    assert len(tok) == n + 2
    ids = tok.encode("def f():\n        return 1")
    assert n + 1 in ids
    assert tok.decode(ids) == "def f():\n        return 1"
    assert tok.eos_token_id == vocab["<|endoftext|>"]
