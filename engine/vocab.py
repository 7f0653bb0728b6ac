"""The vocabulary an engine is built with: which embedding row each id looks up in code modality
(remap), which ids are never sampled, the end-of-sequence id, the modality of generated tokens, and
the detokenizer of generated text. A plain checkpoint's is the identity; CodeCLM's modality-
separated vocabulary (engine/codeclm.py) has the same interface."""
from __future__ import annotations

from pathlib import Path

import torch

from . import codeclm
from .tokenizer import IncrementalDetokenizer, Tokenizer


class Vocabulary:
    """Every id looks up its own row, every id may be sampled, generated tokens are text and the
    tokenizer's EOS ends a sequence."""
    generated_modality = 0
    eos_token_id: int | None = None  # None: the tokenizer's

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size  # rows of wte

    @property
    def remap(self) -> torch.Tensor:
        """[vocab_size] int64: the wte row of each id in code modality."""
        return torch.arange(self.vocab_size, dtype=torch.int64)

    @property
    def sampling_mask(self) -> torch.Tensor:
        """[vocab_size] bool: ids that are never sampled."""
        return torch.zeros(self.vocab_size, dtype=torch.bool)

    def detokenizer(self, tokenizer: Tokenizer, prompt_token_ids: list[int] | None = None):
        return IncrementalDetokenizer(tokenizer, prompt_token_ids)


def load_vocabulary(model_dir: str | Path, tokenizer: Tokenizer, vocab_size: int):
    """The checkpoint's vocabulary: CodeCLM's when it has twins, else the plain one."""
    return codeclm.detect(model_dir, tokenizer, vocab_size) or Vocabulary(vocab_size)
