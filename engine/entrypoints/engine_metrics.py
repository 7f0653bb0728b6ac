"""Prometheus families of the engine stats snapshot (AsyncLLM.stats): the one rule for the single
server's unlabelled engine metrics and the ingress's per-replica ones (labelled `replica`)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# (name after the prefix, help, stats key, kind) of the samples every engine reports.
ENGINE_SAMPLES = (
    ("num_requests_running", "Requests scheduled in the engine.", "num_running", "gauge"),
    ("num_requests_waiting", "Requests queued in the engine.", "num_waiting", "gauge"),
    ("kv_blocks_used", "KV-cache blocks in use by requests.", "num_used_blocks", "gauge"),
    ("kv_blocks_total", "KV-cache blocks allocated.", "num_total_blocks", "gauge"),
    ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", "prefix_cache_queries",
     "counter"),
    ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", "prefix_cache_hits", "counter"),
)
# (name after the prefix, help, numerator key, denominator key); 0 while the denominator is 0.
_RATIOS = (
    ("kv_cache_usage_ratio", "Fraction of KV blocks in use.", "num_used_blocks", "num_total_blocks"),
    ("prefix_cache_hit_rate", "Prefix-cache hits / queries (tokens) since start.", "prefix_cache_hits",
     "prefix_cache_queries"),
)


def engine_families(prefix: str, samples, rows, labels=()):
    """One family per entry of `samples` (as ENGINE_SAMPLES) and per ratio, named prefix + name,
    with a sample per (label values, stats) of `rows`: the server passes [((), stats)], the
    ingress one row per replica with labels ("replica",)."""
    families = []
    for name, doc, key, kind in samples:
        family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
            prefix + name, doc, labels=list(labels))
        for values, stats in rows:
            family.add_metric(list(values), float(stats.get(key, 0)))
        families.append(family)
    for name, doc, num_key, den_key in _RATIOS:
        family = GaugeMetricFamily(prefix + name, doc, labels=list(labels))
        for values, stats in rows:
            den = stats.get(den_key, 0)
            family.add_metric(list(values), stats.get(num_key, 0) / den if den else 0.0)
        families.append(family)
    return families
