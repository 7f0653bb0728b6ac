"""CodeCLM partial embedding separation (pycodegpt-CodeCLM-partial-100m): the vocabulary of twins
and its decoding (its HumanEval prompt layout is engine/tools/humaneval/codeclm.py).

About 350 Python-specific tokens `s` have a twin `[_DUP_]s` appended to the vocabulary as an added
token. Code-modality tokens look up the twin's embedding row (the remap table, used inside the
gated-embedding kernel), text-modality tokens their own. Generated tokens are code, and the text ids
of separated tokens are masked out of the logits, so a separated token is always emitted as its twin.
Generated code is linearised: `<NEW_LINE>`, `<INDENT>`, `<DEDENT>` stand for line breaks and
indentation, and `<eot>` ends it.

The checkpoint also ships replicated_tokens_map.pkl (text id -> code id). The tokenizer is the source
of truth; the pickle is only cross-checked, read by an unpickler that can build nothing but plain
containers and ints (so a pickle carrying a callable is refused, never run).
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

from .tokenizer import IncrementalDetokenizer, Tokenizer

DUP = "[_DUP_]"
MAP_FILE = "replicated_tokens_map.pkl"
NEW_LINE, INDENT, DEDENT = "<NEW_LINE>", "<INDENT>", "<DEDENT>"
EOT = "<eot>"
INDENT_TEXT = " " * 4
_LINEARISED = re.compile(f"({re.escape(NEW_LINE)}|{re.escape(INDENT)}|{re.escape(DEDENT)})")


# ----------------------------------------------------------------- replicated_tokens_map.pkl
class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A token map that reaches for a global: refused (a ValueError like every loading error)."""


class _IntMapUnpickler(pickle.Unpickler):
    """Builds dicts, lists and ints only: every global lookup (the way a pickle reaches a callable
    such as os.system) is refused."""

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(
            f"{MAP_FILE} may hold only a dict of int -> int; refusing to load {module}.{name}")


_MAX_MAP_BYTES = 64 << 20  # the real map has ~700 entries


def read_replicated_tokens_map(path: str | Path) -> dict[int, int]:
    """Read a replicated_tokens_map.pkl safely: a dict of int -> int, or an error."""
    if os.path.getsize(path) > _MAX_MAP_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_MAP_BYTES >> 20} MiB; not a token map")
    try:
        with open(path, "rb") as f:
            data = _IntMapUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a pickled dict of int -> int ({type(exc).__name__}: "
                         f"{str(exc)[:100]})") from None
    if not isinstance(data, dict) or not all(
            type(k) is int and type(v) is int for k, v in data.items()):  # bool is not an id
        raise ValueError(f"{path}: expected a dict of int -> int, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------- the vocabulary of twins
@dataclass(frozen=True)
class CodeCLMVocab:
    """The engine's vocabulary (engine/vocab.py's interface) for a modality-separated checkpoint:
    generated tokens are code, text twins are never sampled, <eot> ends a sequence."""
    twins: dict[int, int]       # text id -> code id ([_DUP_] twin)
    vocab_size: int             # rows of wte
    marker_ids: dict[int, str]  # token id -> <NEW_LINE> | <INDENT> | <DEDENT>
    eot_token_id: int | None    # end of generated code
    generated_modality: ClassVar[int] = 1

    @property
    def eos_token_id(self) -> int | None:
        return self.eot_token_id

    @property
    def remap(self) -> "torch.Tensor":
        """[vocab_size] int64: wte row of each id in code modality (identity but for the twins)."""
        import torch  # the text side of this module (decoding, the token map) needs no torch
        table = torch.arange(self.vocab_size, dtype=torch.int64)
        if self.twins:
            table[torch.tensor(list(self.twins))] = torch.tensor(list(self.twins.values()))
        return table

    @property
    def text_twin_mask(self) -> "torch.Tensor":
        """[vocab_size] bool: text ids that have a code twin (never sampled when generating code)."""
        import torch
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.twins:
            mask[torch.tensor(list(self.twins))] = True
        return mask

    @property
    def sampling_mask(self) -> "torch.Tensor":
        """The text twins: a separated token is always emitted as its code twin."""
        return self.text_twin_mask

    def detokenizer(self, tokenizer: Tokenizer, prompt_token_ids: list[int] | None = None) -> "CodeDetokenizer":
        """Generated code is decoded on its own (prompt_token_ids are not needed)."""
        return CodeDetokenizer(self, tokenizer)


def twins_from_tokenizer(tokenizer: Tokenizer) -> dict[int, int]:
    """{id of s: id of "[_DUP_]" + s} over the tokenizer's added tokens."""
    twins = {}
    for content, code_id in tokenizer.added_tokens.items():
        if not content.startswith(DUP):
            continue
        text_id = tokenizer.token_to_id(content[len(DUP):])
        if text_id is None:
            raise ValueError(f"tokenizer: added token {content!r} has no text twin "
                             f"{content[len(DUP):]!r} in the vocabulary")
        twins[text_id] = code_id
    return twins


def detect(model_dir: str | Path, tokenizer: Tokenizer, vocab_size: int) -> CodeCLMVocab | None:
    """The CodeCLM vocabulary of a checkpoint, or None for an ordinary one."""
    map_path = Path(model_dir) / MAP_FILE
    twins = twins_from_tokenizer(tokenizer)
    if map_path.is_file():
        pickled = read_replicated_tokens_map(map_path)
        if twins and pickled != twins:
            diff = sorted(set(pickled.items()) ^ set(twins.items()))[:5]
            raise ValueError(f"{map_path} disagrees with the tokenizer's {DUP} tokens, e.g. {diff}")
        twins = twins or pickled
    if not twins:
        return None
    bad = [i for pair in twins.items() for i in pair if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"CodeCLM twin ids outside the embedding of {vocab_size} rows: {bad[:5]}")
    markers = {tokenizer.token_to_id(m): m for m in (NEW_LINE, INDENT, DEDENT)}
    markers.pop(None, None)
    return CodeCLMVocab(twins, vocab_size, markers, tokenizer.token_to_id(EOT))


# ----------------------------------------------------------------- decoding
class _LineBuilder:
    """Linearised code -> source, append-only (so it can stream).

    A line is indented by the <INDENT>/<DEDENT> seen since the last <NEW_LINE> when its first
    non-blank text arrives; whitespace at either end of a line is dropped and blank lines carry no
    indentation (as the authors' post-processing does, up to those blank lines)."""

    def __init__(self):
        self.level = 0
        self.line_started = False
        self.held = ""  # trailing whitespace of the current line: emitted only if text follows

    def marker(self, marker: str) -> str:
        if marker == NEW_LINE:
            self.line_started, self.held = False, ""
            return "\n"
        self.level += 1 if marker == INDENT else -1
        return ""

    def text(self, text: str) -> str:
        if not self.line_started:
            text = text.lstrip()
            if not text:
                return ""
            self.line_started = True
            text = INDENT_TEXT * max(self.level, 0) + text
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body):]
        return out


def linearised_to_source(text: str) -> str:
    """Strip [_DUP_] and rebuild lines and indentation from <NEW_LINE>, <INDENT>, <DEDENT>."""
    builder = _LineBuilder()
    pieces = _LINEARISED.split(text.replace(DUP, ""))  # markers at odd indices
    return "".join(builder.marker(p) if i % 2 else builder.text(p) for i, p in enumerate(pieces))


class CodeDetokenizer:
    """Streams generated token ids as source text (IncrementalDetokenizer's `add` interface).

    Twins decode as their text twin (so [_DUP_] never appears), marker tokens drive the line
    builder, other special tokens (<eot>, <pad>, ...) decode to nothing."""

    def __init__(self, vocab: CodeCLMVocab, tokenizer: Tokenizer):
        self.vocab = vocab
        self.code_to_text = {code: text for text, code in vocab.twins.items()}
        self.bytes = IncrementalDetokenizer(tokenizer)  # holds back half UTF-8 characters
        self.lines = _LineBuilder()
        self.text = ""

    def add(self, token_id: int) -> str:
        marker = self.vocab.marker_ids.get(token_id)
        if marker is not None:
            new = self.lines.marker(marker)
        else:
            new = self.lines.text(self.bytes.add(self.code_to_text.get(token_id, token_id)))
        self.text += new
        return new
