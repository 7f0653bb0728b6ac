"""Prompt-lookup (n-gram) drafts: the tokens that followed the most recent earlier occurrence of
a sequence's longest suffix of prompt_lookup_max down to prompt_lookup_min tokens, looked up in
its own prompt and generated tokens. Plain Python, no torch.

Each sequence keeps an index per n-gram length, n-gram -> where its most recent occurrence ends,
extended by the tokens appended since its last lookup: a lookup costs a few dict probes however
long the prompt is, not a scan of it."""
from __future__ import annotations

from ..core.sequence import Sequence


class NgramIndex:
    """For each n in [n_min, n_max]: n-gram (tuple) -> end position of its latest occurrence,
    over the n-grams that end before position `indexed`; `tokens` the sequence's tokens as the
    lookup sees them (code-modality ids through the remap, see NgramProposer)."""

    def __init__(self, n_min: int, n_max: int):
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(n_min, n_max + 1)}
        self.tokens: list[int] = []
        self.indexed = 0

    def extend(self, upto: int) -> None:
        """Index the n-grams ending at positions below upto (later occurrences overwrite)."""
        tokens = self.tokens
        for end in range(self.indexed, upto):
            for n, latest in self.maps.items():
                if end + 1 >= n:
                    latest[tuple(tokens[end + 1 - n:end + 1])] = end
        self.indexed = max(self.indexed, upto)

    def lookup(self, k: int) -> list[int]:
        """Up to k tokens after the latest earlier occurrence of the longest suffix found."""
        tokens = self.tokens
        total = len(tokens)
        # Every n-gram ending before the last position: the suffix itself is never its own match.
        self.extend(total - 1)
        for n in sorted(self.maps, reverse=True):
            if n > total:
                continue
            end = self.maps[n].get(tuple(tokens[total - n:]))
            if end is not None:
                return tokens[end + 1:end + 1 + k]
        return []


class NgramProposer:
    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int, remap: list[int] | None = None):
        """remap: the embedding row of each id in code modality (CodeCLM's twins; None: identity).
        Generated tokens are code-modality ids, so a code-modality prompt token is looked up as the
        id the model would emit for it."""
        self.n_min, self.n_max = prompt_lookup_min, prompt_lookup_max
        self.remap = remap

    def propose(self, seq: Sequence, index: NgramIndex | None, k: int) -> tuple[list[int], NgramIndex]:
        """(up to k draft tokens for seq, its index: pass it back next time)."""
        if index is None:
            index = NgramIndex(self.n_min, self.n_max)
        known = index.tokens
        new = range(len(known), seq.num_tokens)
        if self.remap is None:
            known += seq.token_ids[new.start:]
        else:
            known += [self.remap[seq.token_ids[i]] if seq.modality[i] else seq.token_ids[i] for i in new]
        return index.lookup(k), index
