"""PrefixAffinityRouter: Ray Serve's request-router extension point, choosing for each engine call
the replica that most likely holds its prompt's prefix blocks.

Ray Serve calls `choose_replicas` with the live replicas and the pending call, whose arguments
are EngineReplica.generate's (request_id, tokens, sampling_params): `tokens` is what the ingress
tokenised, so the key is computed from the very ids the replica's block manager will hash. The
answer is ranks: the affinity replica alone first, then the others (Serve takes the least loaded
of a rank whose replicas accept). The replica is skipped for all of them at once when it is
saturated: full (Serve's rejection protocol), or `imbalance_threshold` ongoing requests above the
least loaded replica. Calls without a prompt, or prompts shorter than one full block, go to the
least loaded replica.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .affinity import prefix_key, rank_by_affinity


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, block_size: int = 16, affinity_blocks: int = 4,
                         imbalance_threshold: int = 8, **_):
        """From RequestRouterConfig.request_router_kwargs."""
        self.block_size = block_size
        self.affinity_blocks = affinity_blocks
        self.imbalance_threshold = imbalance_threshold

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        key = self._key(pending_request)
        if key is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        ranked = [by_id[i] for i in rank_by_affinity(key, list(by_id))]
        if self._saturated(ranked[0], candidate_replicas):
            return [candidate_replicas]
        return [ranked[:1], ranked[1:]]

    def _key(self, pending_request: PendingRequest | None) -> bytes | None:
        if pending_request is None or len(pending_request.args) < 2:
            return None
        tokens = pending_request.args[1]
        if not isinstance(tokens, dict) or "prompt_token_ids" not in tokens:
            return None
        return prefix_key(tokens["prompt_token_ids"], tokens.get("modality"), self.block_size,
                          self.affinity_blocks)

    def _saturated(self, replica: RunningReplica, candidates: list[RunningReplica]) -> bool:
        """From the queue lengths Serve last learned (unknown ones count as idle)."""
        def queue_len(r: RunningReplica) -> int:
            return self.replica_queue_len_cache.get(r.replica_id) or 0

        mine = queue_len(replica)
        if mine >= replica.max_ongoing_requests:
            return True
        return mine - min(queue_len(r) for r in candidates) > self.imbalance_threshold
