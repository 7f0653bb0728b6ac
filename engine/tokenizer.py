"""Tokenizer (Hugging Face `tokenizers`) and incremental detokenisation for streaming.

Loads tokenizer.json, or GPT-2 style vocab.json + merges.txt with added tokens from
added_tokens.json / tokenizer_config.json (CodeGen's whitespace tokens)."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _build_gpt2_tokenizer(model_dir: Path, tok_config: dict) -> HFTokenizer:
    bpe = models.BPE.from_file(str(model_dir / "vocab.json"), str(model_dir / "merges.txt"))
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    added: dict[str, int] = {}
    for content, idx in _read_json(model_dir / "added_tokens.json").items():
        added[content] = idx
    for idx, spec in (tok_config.get("added_tokens_decoder") or {}).items():
        added.setdefault(spec["content"], int(idx))
    special = {_token_text(tok_config.get(k)) for k in ("eos_token", "bos_token", "unk_token", "pad_token")}
    vocab = tok.get_vocab(with_added_tokens=True)
    for content, idx in sorted(added.items(), key=lambda kv: kv[1]):
        if content in vocab:
            continue
        if idx != tok.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"added token {content!r} has id {idx}, expected the next free id "
                             f"{tok.get_vocab_size(with_added_tokens=True)}")
        tok.add_tokens([AddedToken(content, special=content in special, normalized=False)])
    return tok


class Tokenizer:
    """Thin wrapper: encode/decode, special ids, vocabulary size (len)."""

    def __init__(self, model_dir: str | Path, eos_token_id: int | None = None):
        model_dir = Path(model_dir)
        tok_config = _read_json(model_dir / "tokenizer_config.json")
        if (model_dir / "tokenizer.json").is_file():
            self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
            self._tok = _build_gpt2_tokenizer(model_dir, tok_config)
        else:
            raise ValueError(f"model: no tokenizer.json or vocab.json + merges.txt in {model_dir}")
        self._tok.no_padding()
        self._tok.no_truncation()
        eos_text = _token_text(tok_config.get("eos_token"))
        if eos_token_id is None and eos_text is not None:
            eos_token_id = self._tok.token_to_id(eos_text)
        if eos_token_id is None:
            eos_token_id = self._tok.token_to_id("<|endoftext|>")
        self.eos_token_id = eos_token_id
        self.vocab = self._tok.get_vocab(with_added_tokens=True)
        self.added_tokens = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, never emitting half a UTF-8 character.

    Decodes a small window: tokens[prefix_offset:read_offset] were already emitted; the text of
    tokens[prefix_offset:] minus that prefix is new, unless it ends in a replacement character
    (an incomplete byte sequence), in which case we wait for more tokens."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = list(prompt_token_ids or [])[-6:]
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (may be "")."""
        self.token_ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self.prefix_offset:self.read_offset])
        full = decode(self.token_ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
            self.text += new
            return new
        return ""
