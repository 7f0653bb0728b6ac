"""KV-cache block manager: plain Python, no torch.

Free list in least-recently-freed order, ref counts, a hash chain over full blocks for prefix reuse
(blocks keep their hash while free, so a later request can revive them until they are evicted),
copy-on-write when forked samples share a partially filled block."""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from .sequence import Sequence


def block_hash(parent: bytes, token_ids: list[int], modality: list[int]) -> bytes:
    """Hash of a full block, chained on its parent's; the modality bit is part of the key."""
    payload = struct.pack(f"<{len(token_ids)}q", *token_ids) + bytes(modality)
    return hashlib.sha256(parent + payload).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks must be at least 1, got {num_blocks}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.hashes: list[bytes | None] = [None] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0     # prompt tokens found in the cache

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take_free(self) -> int:
        block, _ = self.free.popitem(last=False)  # least recently freed first
        old = self.hashes[block]
        if old is not None:
            if self.cached.get(old) == block:
                del self.cached[old]
            self.hashes[block] = None
        self.ref_counts[block] = 1
        return block

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def _full_block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        hashes = list(seq.block_hashes[:num_blocks])
        bs = self.block_size
        for i in range(len(hashes), num_blocks):
            parent = hashes[-1] if hashes else b""
            hashes.append(block_hash(parent, seq.token_ids[i * bs:(i + 1) * bs],
                                     seq.modality[i * bs:(i + 1) * bs]))
        return hashes

    def allocate_cached_prefix(self, seq: Sequence) -> None:
        """For a sequence starting from scratch: reuse cached full blocks of its tokens.

        At least one token is always left to compute, so the last block's logits exist, and so
        are the positions whose logits prompt logprobs still need (as vLLM, which skips the cache
        for such requests)."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return
        num_full = (seq.num_tokens - 1) // self.block_size
        needed_from = seq.request.prompt_logprobs_from
        if needed_from is not None:
            num_full = min(num_full, needed_from // self.block_size)
        hashes = self._full_block_hashes(seq, num_full)
        hits = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        for block in hits:
            self._ref(block)
        seq.block_table = hits
        seq.block_hashes = hashes
        seq.num_registered_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += seq.num_computed_tokens

    def slots_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Free blocks that append_slots(seq, num_new_tokens) would take."""
        total = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        need = max(0, total - len(seq.block_table))
        first = seq.num_computed_tokens // self.block_size
        if first < len(seq.block_table) and self.ref_counts[seq.block_table[first]] > 1:
            need += 1  # copy-on-write of the shared block we write into
        return need

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make room for num_new_tokens more tokens; returns (src, dst) block copies to perform."""
        copies = []
        first = seq.num_computed_tokens // self.block_size
        if first < len(seq.block_table) and self.ref_counts[seq.block_table[first]] > 1:
            src = seq.block_table[first]
            dst = self._take_free()
            self.ref_counts[src] -= 1
            seq.block_table[first] = dst
            copies.append((src, dst))
        total = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        while len(seq.block_table) < total:
            seq.block_table.append(self._take_free())
        return copies

    def register_full_blocks(self, seq: Sequence) -> None:
        """Give every fully computed block of seq its hash so later requests can reuse it."""
        if not self.enable_prefix_caching:
            return
        # A sequence that stopped inside a step's accepted drafts has computed KV for tokens it
        # never appended: a hash covers appended tokens only.
        computed = min(seq.num_computed_tokens, seq.num_tokens)
        num_full = min(computed // self.block_size, len(seq.block_table))
        if num_full <= seq.num_registered_blocks:
            return
        seq.block_hashes = self._full_block_hashes(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            block, h = seq.block_table[i], seq.block_hashes[i]
            if self.hashes[block] is None:
                self.hashes[block] = h
                self.cached.setdefault(h, block)
        seq.num_registered_blocks = num_full

    def fork(self, parent: Sequence, child: Sequence) -> None:
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_registered_blocks = parent.num_registered_blocks
        for block in child.block_table:
            self._ref(block)

    def truncate(self, seq: Sequence) -> None:
        """Give back the blocks past seq's computed tokens: those only rejected draft tokens
        wrote (speculative decoding). They were taken fresh this step, so they hold no hash."""
        keep = self.blocks_needed(seq.num_computed_tokens)
        for block in reversed(seq.block_table[keep:]):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] == 0 and self.hashes[block] is None
            self.free[block] = None
        del seq.block_table[keep:]

    def free_seq(self, seq: Sequence) -> None:
        # Tail blocks first, so they are evicted before the prefix blocks other requests share.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0
            if self.ref_counts[block] == 0:
                self.free[block] = None
        # block_hashes stay: they depend on the tokens only, which a preempted sequence keeps.
        seq.block_table = []
        seq.num_registered_blocks = 0
        seq.num_computed_tokens = 0
