"""Prometheus metrics of the server, in a registry of its own (no process-global state).

Counters and latency histograms are updated by the request handlers; engine gauges (running,
waiting, KV blocks, prefix cache) are read from AsyncLLM.stats at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..engine_metrics import ENGINE_SAMPLES, engine_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

OUTCOMES = ("success", "aborted", "rejected", "invalid", "unauthorized", "error")

_SERVER_SAMPLES = ENGINE_SAMPLES + (
    ("cpu_threads", "Threads the CPU kernels run decode steps on now (at most --threads; fewer "
     "while other work holds cores; prefill steps use every thread).", "num_cpu_threads", "gauge"),
    ("num_preemptions", "Requests preempted by the scheduler.", "num_preemptions", "counter"),
)


class ServerMetrics:
    def __init__(self, async_llm):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "codeinfer_requests", "Completion requests by outcome: success, aborted (client left "
            "or shutdown), rejected (queue full), invalid (4xx), unauthorized, error (5xx).",
            ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.finished_sequences = Counter(
            "codeinfer_finished_sequences", "Generated sequences by finish reason.",
            ["finish_reason"], registry=self.registry)
        for reason in ("stop", "length", "abort"):
            self.finished_sequences.labels(reason)
        self.prompt_tokens = Counter(
            "codeinfer_prompt_tokens", "Prompt tokens whose prefill is done.",
            registry=self.registry)
        self.generation_tokens = Counter(
            "codeinfer_generation_tokens", "Generated tokens.", registry=self.registry)
        self.ttft = Histogram(
            "codeinfer_time_to_first_token_seconds", "From request arrival to its first token.",
            buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram(
            "codeinfer_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.",
            buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram(
            "codeinfer_request_latency_seconds", "From request arrival to its last token.",
            buckets=_TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(async_llm))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Engine state from the stats snapshot the engine thread refreshes after every step."""

    def __init__(self, async_llm):
        self.async_llm = async_llm

    def describe(self):
        return []

    def collect(self):
        stats = self.async_llm.stats
        yield from engine_families("codeinfer_", _SERVER_SAMPLES, [((), stats)])
        yield GaugeMetricFamily(
            "codeinfer_server_waiting_requests",
            "Requests accepted by the server that have not produced a token yet (bounded by --max-queue).",
            value=float(self.async_llm.num_waiting))
        yield from _spec_decode_metrics(stats)


def _spec_decode_metrics(stats: dict):
    """Speculative decoding's counters (zero without a speculative_config)."""
    counters = (
        ("codeinfer_spec_decode_num_drafts", "Verifications: a sequence's drafts checked in a step.",
         "spec_num_drafts"),
        ("codeinfer_spec_decode_num_draft_tokens", "Draft tokens proposed and verified.",
         "spec_num_draft_tokens"),
        ("codeinfer_spec_decode_num_accepted_tokens", "Draft tokens accepted.",
         "spec_num_accepted_tokens"),
    )
    for name, doc, key in counters:
        yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
    yield GaugeMetricFamily("codeinfer_spec_decode_acceptance_rate",
                            "Accepted / proposed draft tokens since start.",
                            value=stats.get("spec_acceptance_rate", 0.0))
    yield GaugeMetricFamily("codeinfer_spec_decode_mean_accepted_length",
                            "Tokens a verification emits on average (accepted drafts + 1).",
                            value=stats.get("spec_mean_accepted_length", 0.0))
