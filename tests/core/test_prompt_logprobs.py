"""SamplingParams(prompt_logprobs=k): vLLM's shape, the raw model distribution over the ids that can
be sampled (transformers' fp32 log_softmax is the oracle), the same whatever the chunking, the
batch, preemption or the prefix cache do; a request that wants them never takes cached blocks for
the positions it needs."""
import pytest
import torch

from engine import LLM, SamplingParams
from tests.checkpoints import hf_model

GREEDY = dict(temperature=0, max_tokens=3, ignore_eos=True)


def prompt_of(length: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 300, (length,), generator=gen).tolist()


@pytest.fixture(scope="module", params=["codegen", "gptneo"])
def arch(request, tiny_codegen_dir, tiny_gptneo_dir):
    path = tiny_codegen_dir if request.param == "codegen" else tiny_gptneo_dir
    return path, hf_model(path)


@torch.no_grad()
def reference(hf, ids: list[int], sample_vocab: int) -> torch.Tensor:
    """[len(ids), sample_vocab]: row p is the fp32 log_softmax that predicts token p + 1."""
    return hf(torch.tensor([ids])).logits[0, :, :sample_vocab].float().log_softmax(-1)


def check(prompt_logprobs, ids: list[int], ref: torch.Tensor, k: int) -> None:
    assert len(prompt_logprobs) == len(ids) and prompt_logprobs[0] is None
    for p, entry in enumerate(prompt_logprobs[1:]):
        token = ids[p + 1]
        assert next(iter(entry)) == token  # the prompt token first, as vLLM
        top = ref[p].topk(k)
        assert set(entry) == {token, *top.indices.tolist()}
        for t, logprob in entry.items():
            assert logprob == pytest.approx(ref[p, t].item(), abs=1e-4)


@pytest.mark.parametrize("k", [0, 3])
def test_prompt_logprobs_equal_transformers(arch, k):
    path, hf = arch
    llm = LLM(str(path), dtype="float32")
    sample_vocab = len(llm.get_tokenizer())
    ids = prompt_of(70)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(prompt_logprobs=k,
                                                                              **GREEDY))[0]
    ref = reference(hf, ids, sample_vocab)
    check(out.prompt_logprobs, ids, ref, k)
    if llm.engine.config.vocab_size > sample_vocab:  # CodeGen: the padding rows are not normalised over
        full = reference(hf, ids, llm.engine.config.vocab_size)
        assert (full[:, :sample_vocab] - ref).abs().max() > 1e-3
    plain = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(**GREEDY))[0]
    assert plain.prompt_logprobs is None
    assert plain.outputs[0].token_ids == out.outputs[0].token_ids


def test_chunked_prefill_preemption_and_batching_keep_them(arch):
    path, hf = arch
    # A 24-token budget splits prompts into chunks beside decode rows; 12 blocks of 8 tokens
    # cannot hold six sequences of up to 90 tokens, so some are preempted (and recomputed).
    llm = LLM(str(path), dtype="float32", block_size=8, num_kv_blocks=12, max_num_batched_tokens=24)
    sample_vocab = len(llm.get_tokenizer())
    prompts = [prompt_of(n, seed=n) for n in (61, 7, 40, 1, 75, 33)]
    wants = [2, None, 1, 0, 2, None]
    params = [SamplingParams(prompt_logprobs=k, temperature=0, max_tokens=15, ignore_eos=True)
              for k in wants]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert llm.engine.get_stats()["num_preemptions"] > 0
    alone = LLM(str(path), dtype="float32", enable_prefix_caching=False)
    for ids, k, p, out in zip(prompts, wants, params, outs):
        if k is None:
            assert out.prompt_logprobs is None
        else:
            check(out.prompt_logprobs, ids, reference(hf, ids, sample_vocab), k)
        single = alone.generate(prompt_token_ids=[ids], sampling_params=p)[0]
        assert out.outputs[0].token_ids == single.outputs[0].token_ids


def test_they_skip_the_prefix_cache_and_others_keep_their_hits(tiny_gptneo_dir):
    llm = LLM(str(tiny_gptneo_dir), dtype="float32", block_size=8)
    hf = hf_model(tiny_gptneo_dir)
    shared = prompt_of(40)
    llm.generate(prompt_token_ids=[shared + [5]], sampling_params=SamplingParams(**GREEDY))
    hits = llm.engine.get_stats()["prefix_cache_hits"]
    scored, other = shared + [9, 10], shared + [11]
    outs = llm.generate(prompt_token_ids=[scored, other],
                        sampling_params=[SamplingParams(prompt_logprobs=1, **GREEDY),
                                         SamplingParams(**GREEDY)])
    # The other request takes the 5 cached blocks of the shared 40 tokens; the scored one none.
    assert llm.engine.get_stats()["prefix_cache_hits"] - hits == 40
    check(outs[0].prompt_logprobs, scored, reference(hf, scored, len(llm.get_tokenizer())), 1)
    uncached = LLM(str(tiny_gptneo_dir), dtype="float32", enable_prefix_caching=False)
    expected = uncached.generate(prompt_token_ids=[scored, other], sampling_params=SamplingParams(**GREEDY))
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in expected]


def test_n_samples_share_one_set(tiny_codegen_dir):
    llm = LLM(str(tiny_codegen_dir), dtype="float32")
    ids = prompt_of(20)
    one = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(prompt_logprobs=2))[0]
    many = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(
        n=3, seed=5, prompt_logprobs=2, max_tokens=4))[0]
    assert len(many.outputs) == 3
    assert many.prompt_logprobs == one.prompt_logprobs


def test_edge_prompts(tiny_codegen_dir):
    llm = LLM(str(tiny_codegen_dir), dtype="float32")
    sample_vocab = len(llm.get_tokenizer())
    single = llm.generate(prompt_token_ids=[[42]], sampling_params=SamplingParams(prompt_logprobs=5))
    assert single[0].prompt_logprobs == [None]
    # A padding id (valid in the embedding, never sampled) has no probability: -inf, not an error.
    padding = sample_vocab + 3
    out = llm.generate(prompt_token_ids=[[42, padding, 7]],
                       sampling_params=SamplingParams(prompt_logprobs=2, max_tokens=1))[0]
    assert out.prompt_logprobs[1][padding] == float("-inf")
    assert all(t < sample_vocab for t in list(out.prompt_logprobs[1])[1:])
    assert out.prompt_logprobs[2][7] > float("-inf")
