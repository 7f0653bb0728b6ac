"""The bytes a decode step reads, counted the same way for every system, and the machine's memory
bandwidth measured next to it (a read-only stream, the ceiling of a decode step, and a copy).

A decode step of a batch of sequences reads, in each system's storage dtypes:
    every linear weight once (lm_head included), with its per-output-channel extras (int8 scales,
    column sums, zero points), its bias, and the layer norms;
    per sequence: one embedding row (and one learned-position row for GPT-Neo), and the cached
    K and V at the step's context length, a local-attention layer only its window.
Whole embedding tables are not counted: a step reads one row per token, not the table. The KV term
is what a step must read; an implementation that reads more (a local layer over its whole cache)
does not get credit for it."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import ModelConfig


@dataclass(frozen=True)
class Storage:
    """How a system stores what a decode step reads, in bytes per element."""
    weight: float         # a linear weight element: int8 1, bf16 / fp16 2, fp32 4, int4 1/2 + its
                          # group's scale and min (fp16 each) / group size
    per_channel: int      # extra per output channel of a linear (int8: scale, column sum, zero point)
    act: int              # embeddings, norms and biases: the activation dtype
    kv: int               # one K or V element in the cache
    kv_per_row: int = 0   # extra per cached (token, head) row of K or V (int8 cache: its scale(s))
    head_weight: float | None = None   # the lm_head's weight and per-channel extra where they differ
    head_per_channel: int | None = None  # (dtype int4 keeps an int8 lm_head)


def _is_neo(config: ModelConfig) -> bool:
    return config.architecture == "GPTNeoForCausalLM"


def linear_shapes(config: ModelConfig) -> list[tuple[int, int, bool]]:
    """(out_features, in_features, has_bias) of every linear a decode step runs, lm_head last."""
    h, inner = config.hidden_size, config.intermediate_size
    # GPT-Neo: q, k, v without bias, out_proj with; CodeGen: fused qkv and out_proj without bias.
    # Both: fc_in / c_fc and fc_out / c_proj with bias. The untied CodeGen lm_head has a bias.
    layer = [(3 * h, h, False), (h, h, _is_neo(config)), (inner, h, True), (h, inner, True)]
    return layer * config.num_layers + [(config.vocab_size, h, not config.tie_word_embeddings)]


def weight_bytes(config: ModelConfig, storage: Storage) -> int:
    """Bytes of the weights one decode step streams: linears with their extras and biases, norms."""
    shapes = linear_shapes(config)
    head = Storage(storage.weight if storage.head_weight is None else storage.head_weight,
                   storage.per_channel if storage.head_per_channel is None else storage.head_per_channel, 0, 0)
    total = sum(int(out * inp * s.weight) + out * s.per_channel + (out * storage.act if bias else 0)
                for (out, inp, bias), s in zip(shapes, [storage] * (len(shapes) - 1) + [head]))
    # Norms: ln_1 (+ ln_2 in GPT-Neo) per layer and ln_f, each a weight and a bias of hidden_size.
    num_norms = config.num_layers * (2 if _is_neo(config) else 1) + 1
    return total + num_norms * 2 * config.hidden_size * storage.act


def sequence_bytes(config: ModelConfig, storage: Storage, seq_len: int) -> int:
    """Bytes one sequence adds to a decode step at context seq_len (its new token included): its
    embedding (+ position) row and the K and V rows every layer attends over."""
    rows = 2 if config.learned_positions else 1
    embedding = rows * config.hidden_size * storage.act
    row = config.head_dim * storage.kv + storage.kv_per_row  # one (token, head) row of K or of V
    keys = sum(min(seq_len, window) if window else seq_len for window in config.layer_windows)
    return embedding + 2 * keys * config.num_heads * row


def decode_bytes(config: ModelConfig, storage: Storage, prompt_len: int, max_tokens: int,
                 num_seqs: int) -> int:
    """Bytes all decode steps of a run read: max_tokens - 1 steps (the first token comes from the
    prefill), step k of each of num_seqs sequences attending over prompt_len + k keys."""
    weights = weight_bytes(config, storage)
    return sum(weights + num_seqs * sequence_bytes(config, storage, prompt_len + k)
               for k in range(1, max_tokens))


def _best_seconds(fn, repeats: int) -> float:
    fn()  # page faults and thread-pool start-up stay out of the figure
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(num_bytes: int = 256 << 20, repeats: int = 5) -> dict:
    """Best-of GB/s of a read-only stream (torch sum over an fp32 buffer: what a decode step does
    to its weights) and of a copy (bytes read + bytes written), on all of torch's threads."""
    src = torch.ones(num_bytes // 4)
    read_s = _best_seconds(src.sum, repeats)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), repeats)
    return {"read_gbs": num_bytes / read_s / 1e9, "copy_gbs": 2 * num_bytes / copy_s / 1e9}
