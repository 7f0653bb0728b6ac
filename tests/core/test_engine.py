"""Engine invariants: batching, preemption, chunked prefill and prefix reuse never change tokens."""
import random

import pytest

from engine import LLM, SamplingParams
from engine.core.llm_engine import LLMEngine

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def random_prompts(tok_len: int, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, tok_len) for _ in range(rng.randint(1, 90))] for _ in range(count)]


@pytest.fixture(scope="module")
def codegen_llm(tiny_codegen_dir):
    return LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="torch")


def assert_all_blocks_free(llm: LLM):
    engine = llm.engine
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert all(r == 0 for r in engine.block_manager.ref_counts)


def test_batched_equals_single(codegen_llm):
    prompts = random_prompts(len(codegen_llm.get_tokenizer()), 40)
    batched = codegen_llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    for ids, out in zip(prompts, batched):
        single = codegen_llm.generate(prompt_token_ids=[ids], sampling_params=GREEDY)[0]
        assert out.outputs[0].token_ids == single.outputs[0].token_ids
    assert_all_blocks_free(codegen_llm)


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_preemption_and_chunked_prefill_change_no_tokens(arch, tiny_codegen_dir, tiny_gptneo_dir):
    path = str(tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir)
    ref = LLM(path, dtype="float32", attention_backend="torch", enable_prefix_caching=False)
    prompts = random_prompts(len(ref.get_tokenizer()), 12, seed=1)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in ref.generate(prompt_token_ids=prompts, sampling_params=params)]
    # 14 blocks of 8 tokens cannot hold 12 sequences of up to 120 tokens: forces preemption;
    # a 32-token budget forces prompts to be prefilled in chunks mixed with decode rows.
    tight = LLM(path, dtype="float32", attention_backend="torch", block_size=8, num_kv_blocks=16,
                max_num_batched_tokens=32)
    got = [o.outputs[0].token_ids for o in tight.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert got == expected
    assert tight.engine.get_stats()["num_preemptions"] > 0
    assert_all_blocks_free(tight)


def test_prefix_caching_changes_no_tokens_and_hits(tiny_gptneo_dir):
    shared = list(range(5, 70))
    prompts = [shared + [i, i + 1] for i in range(1, 6)]
    off = LLM(str(tiny_gptneo_dir), dtype="float32", attention_backend="torch", enable_prefix_caching=False)
    on = LLM(str(tiny_gptneo_dir), dtype="float32", attention_backend="torch")
    expected = [o.outputs[0].token_ids for o in off.generate(prompt_token_ids=prompts, sampling_params=GREEDY)]
    first = [o.outputs[0].token_ids for o in on.generate(prompt_token_ids=prompts[:1], sampling_params=GREEDY)]
    hits_before = on.engine.get_stats()["prefix_cache_hits"]
    rest = [o.outputs[0].token_ids for o in on.generate(prompt_token_ids=prompts[1:], sampling_params=GREEDY)]
    assert first + rest == expected
    assert on.engine.get_stats()["prefix_cache_hits"] >= hits_before + 4 * 64
    assert off.engine.get_stats()["prefix_cache_hits"] == 0
    assert_all_blocks_free(on)


def test_seeded_n4_sampling_is_reproducible_and_diverse(codegen_llm):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=1234, ignore_eos=True)
    a = codegen_llm.generate("def add(a, b):", params)[0]
    # The same seeded request next to other traffic gives the same tokens.
    others = SamplingParams(temperature=1.0, max_tokens=9, ignore_eos=True)
    b = codegen_llm.generate(["import os", "def add(a, b):", "class"],
                             [others, params, others])[1]
    samples = [o.token_ids for o in a.outputs]
    assert samples == [o.token_ids for o in b.outputs]
    assert len({tuple(s) for s in samples}) == 4
    assert [o.index for o in a.outputs] == [0, 1, 2, 3]
    assert_all_blocks_free(codegen_llm)


def test_n_samples_share_prompt_blocks(tiny_codegen_dir):
    engine = LLMEngine(str(tiny_codegen_dir), dtype="float32", attention_backend="torch", block_size=8)
    engine.add_request("r", list(range(3, 40)), SamplingParams(n=4, temperature=1.0, max_tokens=4, ignore_eos=True))
    engine.step()  # prefill of the prompt once, then four forks
    used = engine.get_stats()["num_used_blocks"]
    assert used == 5  # 37 tokens = 5 blocks, shared by all four samples
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_stop_strings_and_stop_tokens(codegen_llm):
    base = codegen_llm.generate("def add(a, b):", GREEDY)[0].outputs[0]
    text = base.text
    assert len(text) > 4
    stop = text[2:4]
    out = codegen_llm.generate("def add(a, b):", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:text.find(stop)]
    assert stop not in out.text
    stop_id = base.token_ids[3]
    out = codegen_llm.generate("def add(a, b):", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.token_ids == base.token_ids[:base.token_ids.index(stop_id) + 1]
    assert out.finish_reason == "stop"


def test_eos_is_included_in_token_ids(codegen_llm):
    eos = codegen_llm.get_tokenizer().eos_token_id
    engine = codegen_llm.engine
    # Make EOS the only sampleable continuation by masking everything else.
    runner = engine.runner
    saved = runner.sample_mask.clone(), runner.masked_logits
    runner.sample_mask[:] = True
    runner.sample_mask[eos] = False
    runner.masked_logits = True
    try:
        out = codegen_llm.generate("def", SamplingParams(temperature=0, max_tokens=5))[0].outputs[0]
    finally:
        runner.sample_mask.copy_(saved[0])
        runner.masked_logits = saved[1]
    assert out.token_ids == [eos] and out.finish_reason == "stop" and out.text == ""


def test_abort_frees_blocks(codegen_llm):
    engine = codegen_llm.engine
    engine.add_request("a", "def add(a, b):", SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", "import os", SamplingParams(n=3, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.get_stats()["num_used_blocks"] > 0
    engine.abort_request("a")
    engine.abort_request("b")
    engine.abort_request("unknown")  # no-op
    assert_all_blocks_free(codegen_llm)


@pytest.mark.parametrize("prompt, params, field", [
    ("", SamplingParams(), "prompt"),
    ([], SamplingParams(), "prompt"),
    ([1] * 600, SamplingParams(), "max_model_len"),  # longer than the context
    ([10 ** 9], SamplingParams(), "prompt_token_ids"),
    ({"prompt_token_ids": [1, 2], "modality": [0]}, SamplingParams(), "modality"),
])
def test_bad_requests_raise_before_work(codegen_llm, prompt, params, field):
    with pytest.raises(ValueError, match=field):
        codegen_llm.generate(["def ok():", prompt], params)
    assert_all_blocks_free(codegen_llm)


def test_num_threads_sets_the_stepping_threads_count_and_changes_no_tokens(tiny_codegen_dir):
    import threading

    import torch

    prompts = random_prompts(200, 6)
    before = torch.get_num_threads()
    try:
        ref = LLM(str(tiny_codegen_dir), dtype="bfloat16").generate(prompt_token_ids=prompts,
                                                                    sampling_params=GREEDY)
        one = LLM(str(tiny_codegen_dir), dtype="bfloat16", num_threads=1)
        assert torch.get_num_threads() == 1
        seen = []
        worker = threading.Thread(target=lambda: (one.engine.use_threads(),
                                                  seen.append(torch.get_num_threads())))
        worker.start()
        worker.join()
        assert seen == [1]  # a fresh thread starts from the default; use_threads applies it
        outs = one.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref]
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match="num_threads"):
            LLM(str(tiny_codegen_dir), num_threads=bad)


def test_steps_follow_the_free_cores_and_change_no_tokens(tiny_codegen_dir):
    import torch

    # Long enough contexts that decode rows are split across threads (csrc/attention.cpp).
    prompts = [p * 4 for p in random_prompts(201, 5)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    before = torch.get_num_threads()
    try:
        fixed = LLM(str(tiny_codegen_dir), dtype="bfloat16", num_threads=2, dynamic_threads=False)
        assert not fixed.engine.threads.dynamic
        ref = fixed.generate(prompt_token_ids=prompts, sampling_params=params)
        assert torch.get_num_threads() == 2
        llm = LLM(str(tiny_codegen_dir), dtype="bfloat16", num_threads=2)
        governor = llm.engine.threads
        if not governor.dynamic:
            pytest.skip("no runnable-thread count on this machine")
        governor.others, governor.interval_s = (lambda: 64), 0.0  # a machine full of other work
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        assert governor.threads == 1 and torch.get_num_threads() == 1
        assert [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs] == \
            [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in ref]  # not a bit moved
    finally:
        torch.set_num_threads(before)
