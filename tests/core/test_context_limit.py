"""The context limit as in vLLM: a prompt that fits generates up to the context and finishes with
"length" (a prompt of exactly the context still gets one token, from its last position); a longer
prompt is a ValueError; max_model_len caps the model's context for all of that."""
import pytest

from engine import LLM, SamplingParams
from tests.checkpoints import hf_greedy, hf_model

CONTEXT = 512  # tests/checkpoints.py's n_positions / max_position_embeddings


def greedy(max_tokens: int, n: int = 1) -> SamplingParams:
    return SamplingParams(n=n, temperature=0, max_tokens=max_tokens, ignore_eos=True)


@pytest.fixture(scope="module", params=["codegen", "gptneo"])
def model(request, tiny_codegen_dir, tiny_gptneo_dir):
    path = tiny_codegen_dir if request.param == "codegen" else tiny_gptneo_dir
    llm = LLM(str(path), dtype="float32")
    assert llm.engine.max_model_len == CONTEXT
    return llm, hf_model(path)


def prompt_of(length: int) -> list[int]:
    return [(7 * i) % 250 + 1 for i in range(length)]


def test_prompt_of_exactly_the_context_gives_one_token(model):
    llm, hf = model
    out = llm.generate(prompt_token_ids=[prompt_of(CONTEXT)], sampling_params=greedy(1))[0].outputs[0]
    assert out.finish_reason == "length"
    assert out.token_ids == hf_greedy(hf, prompt_of(CONTEXT), 1, len(llm.get_tokenizer()))


def test_generation_stops_at_the_context_with_length(model):
    llm, hf = model
    prompts = [prompt_of(CONTEXT - 3), prompt_of(CONTEXT)]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=greedy(10 ** 6, n=2))
    for prompt, out in zip(prompts, outs):
        expected = hf_greedy(hf, prompt, max(1, CONTEXT - len(prompt)), len(llm.get_tokenizer()))
        assert [c.token_ids for c in out.outputs] == [expected, expected]
        assert [c.finish_reason for c in out.outputs] == ["length", "length"]


def test_prompt_longer_than_the_context_is_a_value_error(model):
    llm, _ = model
    with pytest.raises(ValueError, match=r"prompt \(513 tokens\) is longer than the context of "
                                         r"512 tokens \(max_model_len\)"):
        llm.generate(prompt_token_ids=[prompt_of(CONTEXT + 1)], sampling_params=greedy(1))
    assert not llm.engine.has_unfinished_requests()


def test_max_model_len_caps_prompts_generation_and_the_cache_check(tiny_codegen_dir):
    # 4 blocks of 16 tokens hold the 64-token context, not prompt + max_tokens.
    llm = LLM(str(tiny_codegen_dir), dtype="float32", max_model_len=64, block_size=16,
              num_kv_blocks=4)
    hf = hf_model(tiny_codegen_dir)
    out = llm.generate(prompt_token_ids=[prompt_of(60)], sampling_params=greedy(10 ** 6))[0]
    assert out.outputs[0].finish_reason == "length"
    assert out.outputs[0].token_ids == hf_greedy(hf, prompt_of(60), 4, len(llm.get_tokenizer()))
    with pytest.raises(ValueError, match=r"longer than the context of 64 tokens \(max_model_len\)"):
        llm.generate(prompt_token_ids=[prompt_of(65)], sampling_params=greedy(1))
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(str(tiny_codegen_dir), max_model_len=CONTEXT + 1)
