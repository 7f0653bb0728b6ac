"""Prefix affinity without Ray: which replica a prompt belongs to.

The key of a prompt is the block manager's own hash chain (engine.core.block_manager.block_hash)
over its first full KV blocks, so two prompts share a key exactly when a replica could serve the
second from the first's cached blocks (as far as those blocks go). Replicas are ranked for a key
by rendezvous (highest random weight) hashing: when a replica joins or leaves, only the keys it
wins or held move, and every router ranks the same way without sharing state.
"""

from __future__ import annotations

import hashlib

from ...core.block_manager import block_hash


def prefix_key(token_ids: list[int], modality: list[int] | None, block_size: int,
               num_blocks: int) -> bytes | None:
    """Hash of the first `num_blocks` full blocks of a prompt (fewer if it has fewer; the block
    the prompt ends in is never full from the cache's point of view: it keeps one token to
    compute). None when the prompt has no full block to share."""
    num_full = min(num_blocks, (len(token_ids) - 1) // block_size)
    if num_full <= 0:
        return None
    modality = modality if modality is not None else [0] * len(token_ids)
    key = b""
    for i in range(num_full):
        span = slice(i * block_size, (i + 1) * block_size)
        key = block_hash(key, token_ids[span], modality[span])
    return key


def rank_by_affinity(key: bytes, replica_ids: list[str]) -> list[str]:
    """replica_ids ordered from the one that should hold `key` to the least fitting."""
    def weight(replica_id: str) -> bytes:
        return hashlib.blake2b(key + replica_id.encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)
