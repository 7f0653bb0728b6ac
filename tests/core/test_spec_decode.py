"""Speculative decoding (prompt lookup) end to end: the output is exactly that of plain decoding,
greedy and seeded sampling, batched and alone, on every dtype and CPU backend, both
architectures, with every sampling option; drafts hit and miss; every block comes back."""
import random

import pytest

from engine import LLM, SamplingParams
from tests.core.test_engine import assert_all_blocks_free
from tests.codeclm_checkpoint import make_codeclm

# A batch size far above the tests' so every sequence drafts; adaptive off so every step does.
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1, "disable_by_batch_size": 256, "adaptive": False}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def mixed_prompts(vocab: int, count: int, seed: int = 0) -> list[list[int]]:
    """Half built for drafts to hit (a text followed by its own start again, a repeated line),
    half random ids; lengths from 1 to ~120."""
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        body = [rng.randrange(1, vocab) for _ in range(rng.randint(1, 60))]
        if i % 4 == 0:
            body = body + body[:max(1, len(body) // 2)]
        elif i % 4 == 1:
            line = body[:rng.randint(2, 8)]
            body = (line * rng.randint(2, 6))[:120]
        prompts.append(body)
    return prompts


def generate(llm: LLM, prompts, params) -> list[list]:
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outs]


def pair(path, **options) -> tuple[LLM, LLM]:
    return LLM(str(path), **options), LLM(str(path), speculative_config=NGRAM, **options)


def assert_drafted(llm: LLM) -> None:
    stats = llm.engine.get_stats()
    assert stats["spec_num_draft_tokens"] > stats["spec_num_accepted_tokens"] > 0
    assert 0 < stats["spec_acceptance_rate"] < 1 and stats["spec_mean_accepted_length"] > 1


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
@pytest.mark.parametrize("dtype, backend, kv", [
    ("float32", "torch", "auto"), ("float32", "cpu", "auto"), ("bfloat16", "cpu", "auto"),
    ("int8", "cpu", "auto"), ("bfloat16", "cpu", "int8")])
def test_greedy_equals_plain_decoding_batched_and_alone(arch, dtype, backend, kv, tiny_codegen_dir,
                                                        tiny_gptneo_dir):
    path = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    plain, spec = pair(path, dtype=dtype, attention_backend=backend, kv_cache_dtype=kv)
    prompts = mixed_prompts(len(plain.get_tokenizer()), 40)
    expected = generate(plain, prompts, GREEDY)
    assert generate(spec, prompts, GREEDY) == expected
    for ids, want in list(zip(prompts, expected))[::5]:
        assert generate(spec, [ids], GREEDY) == [want]
    assert_drafted(spec)
    assert_all_blocks_free(spec)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, max_tokens=20, seed=11, ignore_eos=True),
    SamplingParams(temperature=1.0, top_k=5, max_tokens=20, seed=12, ignore_eos=True),
    SamplingParams(temperature=1.2, top_p=0.7, max_tokens=20, seed=13, ignore_eos=True),
    SamplingParams(temperature=1.0, min_p=0.1, max_tokens=20, seed=14, ignore_eos=True),
    SamplingParams(temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5,
                   frequency_penalty=0.4, max_tokens=20, seed=15, ignore_eos=True),
    SamplingParams(temperature=0, repetition_penalty=1.5, frequency_penalty=0.3, max_tokens=20,
                   ignore_eos=True),
    SamplingParams(n=3, temperature=1.0, max_tokens=15, seed=16, ignore_eos=True),
], ids=["temperature", "top_k", "top_p", "min_p", "penalties", "greedy-penalties", "n3"])
def test_seeded_sampling_equals_plain_decoding(params, tiny_codegen_dir):
    plain, spec = pair(tiny_codegen_dir, dtype="float32", attention_backend="cpu")
    prompts = mixed_prompts(len(plain.get_tokenizer()), 16, seed=3)
    assert generate(spec, prompts, params) == generate(plain, prompts, params)
    assert_all_blocks_free(spec)


def test_logprobs_stops_and_max_tokens_are_those_of_plain_decoding(tiny_gptneo_dir):
    plain, spec = pair(tiny_gptneo_dir, dtype="float32", attention_backend="cpu")
    prompts = mixed_prompts(len(plain.get_tokenizer()), 12, seed=5)
    free = generate(plain, prompts, GREEDY)
    # A stop id and a stop string taken from what plain decoding emits mid-way.
    stop_id = free[0][0][0][6]
    stop_text = next(text[5:7] for ((_, text, _),) in free if len(text) > 8)
    for params in (SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id], ignore_eos=True),
                   SamplingParams(temperature=0, max_tokens=24, stop=[stop_text], ignore_eos=True),
                   SamplingParams(temperature=0, max_tokens=7, ignore_eos=True)):
        assert generate(spec, prompts, params) == generate(plain, prompts, params)
    params = SamplingParams(temperature=0.9, max_tokens=16, logprobs=3, seed=4, ignore_eos=True)
    a = spec.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    b = plain.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert len(x.outputs[0].logprobs) == len(x.outputs[0].token_ids)
        for got, want in zip(x.outputs[0].logprobs, y.outputs[0].logprobs):
            assert got.keys() == want.keys()
            assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-4)
        assert x.outputs[0].cumulative_logprob == pytest.approx(y.outputs[0].cumulative_logprob, abs=1e-3)
    assert all(len(o.outputs[0].token_ids) <= 7 for o in spec.generate(
        prompt_token_ids=prompts, sampling_params=SamplingParams(temperature=0, max_tokens=7),
        use_tqdm=False))
    assert_drafted(spec)
    assert_all_blocks_free(spec)


def test_preemption_chunked_prefill_and_abort_leak_no_block(tiny_codegen_dir):
    plain = LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="cpu")
    # 16 blocks of 8 tokens for 12 sequences of up to ~150 tokens, 32 tokens a step.
    tight = LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="cpu", block_size=8,
                num_kv_blocks=20, max_num_batched_tokens=32, speculative_config=NGRAM)
    prompts = mixed_prompts(len(plain.get_tokenizer()), 12, seed=7)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    assert generate(tight, prompts, params) == generate(plain, prompts, params)
    assert tight.engine.get_stats()["num_preemptions"] > 0
    assert_drafted(tight)
    assert_all_blocks_free(tight)
    engine = tight.engine
    engine.add_request("a", prompts[0], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", prompts[1], SamplingParams(n=2, max_tokens=50, ignore_eos=True))
    for _ in range(4):
        engine.step()
    engine.abort_request("a")
    engine.abort_request("b")
    assert_all_blocks_free(tight)


def test_codeclm_drafts_code_tokens_and_equals_plain_decoding(tmp_path):
    path = make_codeclm(tmp_path / "clm")
    plain, spec = pair(path, dtype="float32", block_size=8)
    code = "def add(a, b):\n    if a:\n        return a + b\n    return b\n"
    prompts = [{"segments": [("code", code + code[:30])]}, {"segments": [("text", "# add"), ("code", code)]},
               "import os\nfor i in range(10):\n    print(i)"]
    for p in prompts:
        a = spec.generate(p, GREEDY, use_tqdm=False)[0].outputs[0]
        b = plain.generate(p, GREEDY, use_tqdm=False)[0].outputs[0]
        assert (a.token_ids, a.text) == (b.token_ids, b.text)
    assert spec.engine.get_stats()["spec_num_draft_tokens"] > 0
    assert_all_blocks_free(spec)


SOURCE = '''class Stack:
    """A last-in first-out stack."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()

    def peek(self):
        return self.items[-1]

    def __len__(self):
        return len(self.items)
'''


def test_copying_text_drafts_and_accepts_with_the_bundled_model():
    """The bundled trained model, given a file and its start again, accepts drafts."""
    plain, spec = LLM(dtype="float32"), LLM(dtype="float32", speculative_config={
        "method": "ngram", "num_speculative_tokens": 5})
    prompt = SOURCE + "\n\n" + SOURCE[:120]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    got = spec.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert got.token_ids == plain.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    stats = spec.engine.get_stats()
    # It copies only in part (a 4-layer model), but more than one token a step on average.
    assert stats["spec_num_accepted_tokens"] > 0 and stats["spec_mean_accepted_length"] > 1.2, stats
