"""Per-replica engine stats on the ingress's /metrics.

Serve routes each call to one replica, so the ingress cannot ask every replica itself. Instead
each replica pushes its stats to a StatsBoard actor (owned by the ingress, named after the app)
every STATS_PERIOD_S; the ingress reads the board on the same period and its /metrics shows each
live replica's gauges labelled `replica`. A replica that stops pushing (its process died) drops
off after STALE_AFTER_S. The unlabelled engine gauges of the app's own collector are the sums.
"""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STATS_PERIOD_S = 0.5
# Long enough that a replica busy on a shared machine (its pushes late) does not flicker off.
STALE_AFTER_S = 10.0


def board_name(app_name: str) -> str:
    return f"codeinfer-stats-{app_name}"


class StatsBoard:
    """The newest stats of each replica (a Ray actor: see deployment.py)."""

    def __init__(self):
        self._stats: dict[str, tuple[float, dict]] = {}

    def put(self, replica_id: str, stats: dict) -> None:
        self._stats[replica_id] = (time.monotonic(), stats)

    def snapshot(self) -> dict[str, dict]:
        now = time.monotonic()
        for replica_id in [r for r, (t, _) in self._stats.items() if now - t > STALE_AFTER_S]:
            del self._stats[replica_id]
        return {replica_id: stats for replica_id, (_, stats) in self._stats.items()}


# (metric, help, stats key, kind) of each per-replica sample.
_SAMPLES = (
    ("codeinfer_replica_num_requests_running", "Requests scheduled in the replica's engine.",
     "num_running", "gauge"),
    ("codeinfer_replica_num_requests_waiting", "Requests queued in the replica's engine.",
     "num_waiting", "gauge"),
    ("codeinfer_replica_kv_blocks_used", "KV-cache blocks in use in the replica.",
     "num_used_blocks", "gauge"),
    ("codeinfer_replica_kv_blocks_total", "KV-cache blocks of the replica.", "num_total_blocks",
     "gauge"),
    ("codeinfer_replica_prefix_cache_queries", "Prompt tokens the replica looked up in its "
     "prefix cache.", "prefix_cache_queries", "counter"),
    ("codeinfer_replica_prefix_cache_hits", "Prompt tokens the replica found in its prefix cache.",
     "prefix_cache_hits", "counter"),
    ("codeinfer_replica_aborted_requests", "Requests aborted in the replica because the client "
     "left.", "num_aborted", "counter"),
)


def summed(per_replica: dict[str, dict]) -> dict:
    """The engine stats of all replicas added up (what the app's unlabelled gauges show)."""
    total: dict = {}
    for stats in per_replica.values():
        for key, value in stats.items():
            if isinstance(value, (int, float)) and key != "pid":
                total[key] = total.get(key, 0) + value
    return total


class ReplicaCollector:
    """Registered on the app's ServerMetrics registry; reads the client's newest snapshot."""

    def __init__(self, client):
        self.client = client

    def describe(self):
        return []

    def collect(self):
        per_replica = self.client.replica_stats
        families = {}
        for name, doc, _, kind in _SAMPLES:
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            families[name] = family(name, doc, labels=["replica"])
        usage = GaugeMetricFamily("codeinfer_replica_kv_cache_usage_ratio",
                                  "Fraction of the replica's KV blocks in use.", labels=["replica"])
        hit_rate = GaugeMetricFamily("codeinfer_replica_prefix_cache_hit_rate",
                                     "The replica's prefix-cache hits / queries (tokens).",
                                     labels=["replica"])
        info = GaugeMetricFamily("codeinfer_replica_info", "One per live replica: its process.",
                                 labels=["replica", "pid"])
        # Counted here, where the router's choice arrives, so a late stats push cannot hide one.
        routed = CounterMetricFamily("codeinfer_replica_requests",
                                     "Requests routed to the replica and accepted by its engine.",
                                     labels=["replica"])
        for replica_id, count in sorted(self.client.routed.items()):
            routed.add_metric([replica_id], float(count))
        for replica_id, stats in sorted(per_replica.items()):
            for name, _, key, _ in _SAMPLES:
                families[name].add_metric([replica_id], float(stats.get(key, 0)))
            total, queries = stats.get("num_total_blocks", 0), stats.get("prefix_cache_queries", 0)
            usage.add_metric([replica_id], stats.get("num_used_blocks", 0) / total if total else 0.0)
            hit_rate.add_metric([replica_id],
                                stats.get("prefix_cache_hits", 0) / queries if queries else 0.0)
            info.add_metric([replica_id, str(stats.get("pid", ""))], 1.0)
        yield from families.values()
        yield from (usage, hit_rate, info, routed)
