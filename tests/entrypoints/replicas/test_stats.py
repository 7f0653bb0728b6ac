"""The ingress's per-replica metrics and the server's engine metrics come from one rendering of the
engine stats (no Ray instance needed)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from engine.entrypoints.replicas.stats import ReplicaCollector
from engine.entrypoints.server.metrics import ServerMetrics

STATS = {"num_running": 2, "num_waiting": 1, "num_used_blocks": 30, "num_total_blocks": 120,
         "prefix_cache_queries": 400, "prefix_cache_hits": 100, "num_aborted": 4, "pid": 123}


def samples(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def test_replica_and_server_engine_samples_agree():
    client = SimpleNamespace(routed={"a": 3}, replica_stats={
        "a": STATS, "b": {**STATS, "num_total_blocks": 0, "prefix_cache_queries": 0}})
    registry = CollectorRegistry()
    registry.register(ReplicaCollector(client))
    replica = samples(generate_latest(registry).decode())
    server = samples(ServerMetrics(SimpleNamespace(stats=STATS, num_waiting=0)).render().decode())
    for name, value in [("num_requests_running", "2.0"), ("kv_blocks_used", "30.0"),
                        ("kv_cache_usage_ratio", "0.25"), ("prefix_cache_hits_total", "100.0"),
                        ("prefix_cache_hit_rate", "0.25")]:
        assert f'codeinfer_replica_{name}{{replica="a"}} {value}' in replica, name
        assert f"codeinfer_{name} {value}" in server, name
    # Ratios of an empty denominator are 0; replica-only samples carry their labels.
    assert 'codeinfer_replica_kv_cache_usage_ratio{replica="b"} 0.0' in replica
    assert 'codeinfer_replica_prefix_cache_hit_rate{replica="b"} 0.0' in replica
    assert 'codeinfer_replica_aborted_requests_total{replica="a"} 4.0' in replica
    assert 'codeinfer_replica_info{pid="123",replica="a"} 1.0' in replica
    assert 'codeinfer_replica_requests_total{replica="a"} 3.0' in replica
