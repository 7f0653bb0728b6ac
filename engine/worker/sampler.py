"""Batched sampler: logits in fp32, per-row parameters, per-sequence seeded generators.

Rows are processed together (penalties, temperature, top-k, top-p, min-p); only the final draw is
per row, from the sequence's own generator, so a seeded sequence gets the same tokens whatever
else is in the batch."""
from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import torch

from ..core.sequence import Sequence
from ..kernel_package import reference

RowStats = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # logits -> (argmax, logsumexp)


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float]                          # logprob of each sampled token
    top_logprobs: list[dict[int, float] | None]    # per row, when the request asked for logprobs

    def __add__(self, other: "SampleResult") -> "SampleResult":
        """The rows of self, then those of other."""
        return SampleResult(self.token_ids + other.token_ids, self.logprobs + other.logprobs,
                            self.top_logprobs + other.top_logprobs)


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence], extras: list[list[int]]) -> None:
    """Row i is the distribution after seqs[i]'s tokens and then extras[i] (the drafts a
    verification row comes after: they count as generated tokens there)."""
    for row, (seq, extra) in enumerate(zip(seqs, extras)):
        p = seq.request.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids).union(extra)), dtype=torch.long)
            vals = logits[row, seen]
            logits[row, seen] = torch.where(vals > 0, vals / p.repetition_penalty,
                                            vals * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            out = seq.output_token_ids + extra
            if out:
                ids, counts = torch.tensor(out, dtype=torch.long).unique(return_counts=True)
                logits[row, ids] -= p.frequency_penalty * counts.float() + p.presence_penalty


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            min_p: torch.Tensor) -> torch.Tensor:
    """Mask (-inf) the logits that top_k, then top_p, then min_p drop, per row; the order and the
    rules of transformers' warpers (SamplingParams says how vLLM differs). logits: [rows, vocab],
    already divided by the temperature; top_k: [rows] (0 = off), top_p, min_p: [rows]."""
    vocab = logits.shape[1]
    # Ascending, as transformers and vLLM sort: the same comparisons give the same masks.
    sorted_logits, order = logits.sort(dim=-1)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    kth = sorted_logits.gather(1, (vocab - k)[:, None])  # ties with the k-th token stay
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)  # the top-k distribution, renormalised
    # top_p: drop a token when it and every less likely one hold at most 1 - top_p of that mass.
    drop = probs.cumsum(dim=-1) <= (1 - top_p)[:, None]
    # min_p: a ratio to the most likely token, which renormalising after top_p would not change.
    drop |= probs < min_p[:, None] * probs[:, -1:]
    drop[:, -1] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _check_finite(probs: torch.Tensor, seqs: list[Sequence]) -> None:
    """probs: [rows, vocab]. Raise, naming the requests, before a NaN row reaches the draws."""
    bad = (~torch.isfinite(probs).all(dim=-1)).nonzero()[:, 0].tolist()
    if bad:
        ids = sorted({seqs[row].request.request_id for row in bad})
        raise FloatingPointError(f"non-finite sampling probabilities for request(s) {ids}")


def sample(logits: torch.Tensor, seqs: list[Sequence],
           row_stats: RowStats = reference.argmax_logsumexp) -> SampleResult:
    """logits: [rows, vocab] fp32, one row per sequence (masked ids already -inf). row_stats: the
    backend's argmax_logsumexp (kernels.reference's by default)."""
    return verify(logits, seqs, [[] for _ in seqs], row_stats)[0]


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from probs [vocab]: what torch.multinomial(probs, 1, generator=generator) draws
    (the exponential race, argmax p / E with E ~ Exp(1)), spelled out so that a verification row
    consumes exactly the random numbers a plain decode row does."""
    race = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / race).argmax())


def verify(logits: torch.Tensor, seqs: list[Sequence], drafts: list[list[int]],
           row_stats: RowStats = reference.argmax_logsumexp) -> tuple[SampleResult, list[Sequence]]:
    """Sample each sequence's next tokens, verifying its drafts. logits: [rows, vocab] fp32, for
    sequence i 1 + len(drafts[i]) consecutive rows, row j the distribution after drafts[i][:j].

    Row j draws its token exactly as a plain decode row would (argmax, or one draw from the
    sequence's generator); draft j is accepted when that token equals it, and the first token
    that differs, or the token after the last draft, ends the sequence's tokens. For a draft that
    is a point mass (n-gram lookup) this is Leviathan et al.'s rejection sampling: draft d is
    accepted with probability p(d), a rejection's token follows p with d removed, renormalised.
    As every emitted token is the draw of its own row, a seeded sequence emits the tokens it
    would without drafts. Returns the emitted tokens (several per sequence) and the sequence of
    each, in order."""
    row_seqs, extras = [], []
    for seq, draft in zip(seqs, drafts):
        for j in range(len(draft) + 1):
            row_seqs.append(seq)
            extras.append(draft[:j])
    params = [s.request.params for s in row_seqs]
    raw_logits = logits
    argmax, log_norm = row_stats(logits)
    if any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty for p in params):
        logits = logits.clone()
        _apply_penalties(logits, row_seqs, extras)
        argmax = row_stats(logits)[0]
    greedy_ids = argmax.tolist()
    rows = [i for i, p in enumerate(params) if not p.greedy]
    probs = _probabilities(logits, rows, params, row_seqs)
    # The draws come after every check, so a step that fails on some request's values has
    # consumed no random numbers: the others, re-run without it, draw what they would have.
    prob_row = {row: j for j, row in enumerate(rows)}
    token_ids, token_rows, owners = [], [], []
    first = 0
    for seq, draft in zip(seqs, drafts):
        for j in range(len(draft) + 1):
            row = first + j
            token = greedy_ids[row] if row not in prob_row else _draw(probs[prob_row[row]], seq.generator)
            token_ids.append(token)
            token_rows.append(row)
            owners.append(seq)
            if j == len(draft) or token != draft[j]:
                break
        first += len(draft) + 1
    if len(token_rows) < len(row_seqs):  # the rows after a rejected draft emit nothing
        raw_logits, log_norm = raw_logits[token_rows], log_norm[token_rows]
    chosen, top = token_logprobs(raw_logits, token_ids, [s.request.params.logprobs for s in owners],
                                 log_norm)
    return SampleResult(token_ids, chosen, top), owners


def _probabilities(logits: torch.Tensor, rows: list[int], params, seqs: list[Sequence]) -> torch.Tensor | None:
    """The sampling distributions [len(rows), vocab] of the given rows: temperature, top_k, top_p,
    min_p; FloatingPointError naming the requests when one is not finite."""
    if not rows:
        return None
    vocab = logits.shape[1]
    sub = logits[rows] / torch.tensor([params[i].temperature for i in rows])[:, None]
    # top_k beyond the vocabulary keeps every token (clamped in Python: 10**20 fits no tensor)
    sub = _filter(sub, torch.tensor([min(params[i].top_k, vocab) for i in rows]),
                  torch.tensor([params[i].top_p for i in rows], dtype=torch.float32),
                  torch.tensor([params[i].min_p for i in rows], dtype=torch.float32))
    probs = sub.softmax(dim=-1)
    _check_finite(probs, [seqs[i] for i in rows])
    return probs


def token_logprobs(logits: torch.Tensor, token_ids: list[int], num_top: list[int | None],
                   log_norm: torch.Tensor | None = None) -> tuple[list[float], list[dict[int, float] | None]]:
    """The logprob (log_softmax of the logits, fp32) of token_ids[i] in row i, and per row whose
    num_top[i] is not None vLLM's logprobs entry: {that token: its logprob, then the num_top[i]
    most likely: theirs} (num_top[i] or num_top[i] + 1 items). logits: [rows, vocab]; ids masked
    to -inf, and prompt ids at or beyond vocab (padding rows, never sampled), have logprob -inf.
    The one rule for sampled and prompt logprobs. log_norm: the rows' logsumexp, when known."""
    vocab = logits.shape[1]
    if log_norm is None:
        log_norm = logits.logsumexp(dim=-1)  # [rows]
    index = torch.tensor([min(t, vocab - 1) for t in token_ids], device=logits.device)[:, None]
    chosen = (logits.gather(1, index)[:, 0] - log_norm).tolist()
    chosen = [lp if t < vocab else float("-inf") for t, lp in zip(token_ids, chosen)]
    entries = [None if k is None else {t: lp} for t, lp, k in zip(token_ids, chosen, num_top)]
    rows = [i for i, k in enumerate(num_top) if k]  # the full log_softmax only for these
    if rows:
        values, ids = logits[rows].topk(min(max(num_top[i] for i in rows), vocab))
        values -= log_norm[rows, None]
        for j, i in enumerate(rows):
            k = num_top[i]
            entries[i].update(zip(ids[j, :k].tolist(), values[j, :k].tolist()))
    return chosen, entries
