"""Tokenizer (Hugging Face `tokenizers`) and incremental detokenisation for streaming.

Loads tokenizer.json, or GPT-2 style vocab.json + merges.txt with added tokens from
added_tokens.json / tokenizer_config.json (CodeGen's whitespace tokens)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from .config import MAX_JSON_BYTES, read_json_object


def _token_text(value, path: Path, key: str) -> str | None:
    """A special token of tokenizer_config.json: "text", {"content": "text"} or null."""
    text = value.get("content") if isinstance(value, dict) else value
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{path}: field {key!r} must be a token string, got {str(value)[:60]}")
    return text


def _from_library(build, *paths: Path):
    """build() with the tokenizers library, which raises a bare Exception on a malformed file."""
    for path in paths:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"{path}: larger than {MAX_JSON_BYTES} bytes, not a tokenizer file")
    try:
        return build()
    except Exception as e:  # the library's only error type for bad input
        why = " ".join(str(e).split())[:200]
        raise ValueError(f"{' + '.join(map(str, paths))}: not a valid tokenizer file ({why})") from None


def _added_tokens(model_dir: Path, tok_config: dict) -> dict[str, int]:
    """{content: id} of added_tokens.json and tokenizer_config.json's added_tokens_decoder."""
    path = model_dir / "added_tokens.json"
    added = read_json_object(path)
    if not all(isinstance(c, str) and type(i) is int and i >= 0 for c, i in added.items()):
        raise ValueError(f"{path}: must map token strings to non-negative integer ids")
    decoder = tok_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(
            idx.isascii() and idx.isdecimal() and isinstance(spec, dict)
            and isinstance(spec.get("content"), str) for idx, spec in decoder.items()):
        raise ValueError(f"{model_dir / 'tokenizer_config.json'}: field 'added_tokens_decoder' must map "
                         f"ids to {{\"content\": token string, ...}}")
    for idx, spec in decoder.items():
        added.setdefault(spec["content"], int(idx))
    return added


def _keeps_every_char(pre_tokenizer: dict | None) -> bool:
    """Whether a pre-tokenizer (tokenizer.json spec) passes every input character on: ByteLevel
    and a Split that isolates or merges its matches do; a Split that removes them, or Whitespace,
    drops characters."""
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return all(_keeps_every_char(p) for p in pre_tokenizer.get("pretokenizers", []))
    return kind == "ByteLevel" or (kind == "Split" and pre_tokenizer.get("behavior") != "Removed")


def _max_token_chars(tok: HFTokenizer) -> int | None:
    """The most characters of input text one token can cover, or None when there is no bound.

    With no normalizer, a pre-tokenizer that keeps every character, a BPE model that never fuses
    unknown characters and no added token that strips the whitespace around it, the tokens
    partition the text (byte-level BPE: its UTF-8 bytes, one vocabulary character per byte), so
    no token covers more characters than its vocabulary string has."""
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if (spec.get("normalizer") is not None or model.get("type") != "BPE" or model.get("fuse_unk")
            or not _keeps_every_char(spec.get("pre_tokenizer"))
            or any(t.get("lstrip") or t.get("rstrip") for t in spec.get("added_tokens") or [])):
        return None
    return max(map(len, tok.get_vocab(with_added_tokens=True)), default=None)


def _check_unicode(text, what: str) -> None:
    """ValueError naming `what` when `text` is a str that is not valid Unicode (a lone surrogate,
    which JSON can spell "\\ud800"), which `tokenizers` would answer with a TypeError."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} is not valid Unicode: lone surrogate "
                             f"U+{ord(text[exc.start]):04X} at character {exc.start}") from None


def _build_gpt2_tokenizer(model_dir: Path, tok_config: dict) -> HFTokenizer:
    vocab_file, merges_file = model_dir / "vocab.json", model_dir / "merges.txt"
    bpe = _from_library(lambda: models.BPE.from_file(str(vocab_file), str(merges_file)),
                        vocab_file, merges_file)
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    config_path = model_dir / "tokenizer_config.json"
    special = {_token_text(tok_config.get(k), config_path, k)
               for k in ("eos_token", "bos_token", "unk_token", "pad_token")}
    vocab = tok.get_vocab(with_added_tokens=True)
    for content, idx in sorted(_added_tokens(model_dir, tok_config).items(), key=lambda kv: kv[1]):
        if content in vocab:
            continue
        if idx != tok.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"{model_dir}: added token {content[:60]!r} has id {idx}, expected the "
                             f"next free id {tok.get_vocab_size(with_added_tokens=True)}")
        tok.add_tokens([AddedToken(content, special=content in special, normalized=False)])
    return tok


class Tokenizer:
    """Thin wrapper: encode/decode, special ids, vocabulary size (len)."""

    def __init__(self, model_dir: str | Path, eos_token_id: int | None = None):
        model_dir = Path(model_dir)
        config_path, tok_path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
        tok_config = read_json_object(config_path)
        if tok_path.is_file():
            self._tok = _from_library(lambda: HFTokenizer.from_file(str(tok_path)), tok_path)
        elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
            self._tok = _build_gpt2_tokenizer(model_dir, tok_config)
        else:
            raise ValueError(f"model: no tokenizer.json or vocab.json + merges.txt in {model_dir}")
        self._tok.no_padding()
        self._tok.no_truncation()
        eos_text = _token_text(tok_config.get("eos_token"), config_path, "eos_token")
        if eos_token_id is None and eos_text is not None:
            eos_token_id = self._tok.token_to_id(eos_text)
        if eos_token_id is None:
            eos_token_id = self._tok.token_to_id("<|endoftext|>")
        self.eos_token_id = eos_token_id
        self.vocab = self._tok.get_vocab(with_added_tokens=True)
        self.added_tokens = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        self.max_token_chars = _max_token_chars(self._tok)

    def with_eos(self, eos_token_id: int) -> Tokenizer:
        """This tokenizer with another end-of-sequence id (CodeCLM's <eot>); self is unchanged."""
        other = copy.copy(self)
        other.eos_token_id = eos_token_id
        return other

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, what: str = "text", release_gil: bool = False,
               add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text` (prompts get no special tokens; add_special_tokens: those the
        tokenizer's post-processor adds, a BOS say); ValueError naming `what` when the text is
        not valid Unicode.

        release_gil: go through encode_batch, the call of `tokenizers` that lets other Python
        threads run while it works (encode holds the GIL throughout), for callers on a worker
        thread. It starts tokenizers' thread pool, after which a forked child prints a warning."""
        try:
            if release_gil:
                return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            _check_unicode(text, what)
            raise

    def min_num_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)) that costs no tokenising (see _max_token_chars)."""
        if self.max_token_chars is None or not text:
            return 0
        return -(-len(text) // self.max_token_chars)

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
