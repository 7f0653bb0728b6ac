"""`codeinfer serve --speculative-config`: the same completions as without it, and the draft
counters in /metrics."""
import json

import httpx

from tests.entrypoints.server.conftest import ServerProcess

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1,
         "prompt_lookup_max": 3, "adaptive": False}


def test_speculative_server_answers_as_plain_and_counts_drafts(server, tiny_codegen_dir):
    spec = ServerProcess(tiny_codegen_dir, "--speculative-config", json.dumps(NGRAM))
    try:
        body = {"prompt": "def add(a, b):\n    return a + b\n" * 3, "max_tokens": 24,
                "temperature": 0}
        want = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        got = httpx.post(spec.url + "/v1/completions", json=body, timeout=60).json()
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        proposed = spec.metric("codeinfer_spec_decode_num_draft_tokens_total")
        accepted = spec.metric("codeinfer_spec_decode_num_accepted_tokens_total")
        assert proposed > 0 and 0 <= accepted <= proposed
        rate = spec.metric("codeinfer_spec_decode_acceptance_rate")
        assert rate == accepted / proposed
        assert server.metric("codeinfer_spec_decode_num_draft_tokens_total") == 0
    finally:
        spec.stop()
