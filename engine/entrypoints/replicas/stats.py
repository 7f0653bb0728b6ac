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

from ..engine_metrics import ENGINE_SAMPLES, engine_families

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


# The engine samples of each replica (codeinfer_replica_*), and its client-left aborts.
_REPLICA_SAMPLES = ENGINE_SAMPLES + (
    ("aborted_requests", "Requests aborted in the replica because the client left.", "num_aborted",
     "counter"),
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
        rows = [((replica_id,), stats) for replica_id, stats in sorted(self.client.replica_stats.items())]
        yield from engine_families("codeinfer_replica_", _REPLICA_SAMPLES, rows, ("replica",))
        info = GaugeMetricFamily("codeinfer_replica_info", "One per live replica: its process.",
                                 labels=["replica", "pid"])
        # Counted here, where the router's choice arrives, so a late stats push cannot hide one.
        routed = CounterMetricFamily("codeinfer_replica_requests",
                                     "Requests routed to the replica and accepted by its engine.",
                                     labels=["replica"])
        for replica_id, count in sorted(self.client.routed.items()):
            routed.add_metric([replica_id], float(count))
        for (replica_id,), stats in rows:
            info.add_metric([replica_id, str(stats.get("pid", ""))], 1.0)
        yield from (info, routed)
