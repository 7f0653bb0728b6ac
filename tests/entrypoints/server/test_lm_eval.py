"""A real client: lm-evaluation-harness's `local-completions` model against `codeinfer serve` with
the bundled model, on two small local tasks (multiple choice: loglikelihoods of echoed prompts;
generate_until: greedy code up to a stop string). Its numbers must be those transformers gives on
the same checkpoint. (The bundled model writes code; a random one writes pieces of UTF-8
characters, which an incremental detokenizer holds back at the end where a full decode does not.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
import torch

from engine.core.llm_engine import default_model_dir
from tests.checkpoints import hf_model
from tests.entrypoints.server.conftest import ServerProcess

# The answers are such that the bundled model gets some right and some wrong.
MC_DOCS = [
    {"context": "def add(a, b):\n    return", "choices": ["a + b", "a - b", "b"], "answer": 0},
    {"context": "import os\nimport", "choices": ["os", "sys", "numpy as np"], "answer": 0},
    # trailing spaces: lm_eval moves them from the context to the continuation
    {"context": "for i in range(10):\n   ", "choices": ["print(i)", "break"], "answer": 1},
    {"context": "class Stack:\n    def", "choices": ["__init__(self):", "push(self, x):"], "answer": 0},
]
GEN_DOCS = [{"prompt": "def fib(n):\n", "target": "        return n"},
            {"prompt": "import os\nimport", "target": " sys"},
            {"prompt": "while True:\n    if x", "target": " > 0:"}]
UNTIL, MAX_GEN_TOKS = ["\n\n"], 12

TASKS = """\
task: codeinfer_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
---
task: codeinfer_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: target
generation_kwargs:
  until: {until}
  max_gen_toks: {max_gen_toks}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def write_tasks(folder) -> None:
    for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    for i, task in enumerate(TASKS.format(dir=folder, until=json.dumps(UNTIL),
                                          max_gen_toks=MAX_GEN_TOKS).split("---\n")):
        (folder / f"task{i}.yaml").write_text(task)


def run_lm_eval(server, model_name, model_dir, folder) -> tuple[dict[str, list[dict]], dict]:
    """lm_eval's logged samples per task, and its results (the aggregated metrics)."""
    model_args = ",".join([f"model={model_name}", f"base_url={server.url}/v1/completions",
                           f"tokenizer={model_dir}", "tokenizer_backend=huggingface",
                           "tokenized_requests=True", "max_length=512"])
    env = {**os.environ, "HF_HOME": str(folder / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
           "--model_args", model_args, "--tasks", "codeinfer_mc,codeinfer_gen",
           "--batch_size", "3", "--include_path", str(folder), "--output_path", str(folder / "out"),
           "--log_samples"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    samples = {}
    for path in (folder / "out").rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    assert set(samples) == {"codeinfer_mc", "codeinfer_gen"}, list((folder / "out").rglob("*"))
    results = json.loads(next((folder / "out").rglob("results_*.json")).read_text())["results"]
    return samples, results


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's split of a loglikelihood request (TemplateLM._encode_pair): trailing spaces of
    the context go to the continuation; the continuation is what follows the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    num_context = len(tokenizer(context)["input_ids"])
    return whole[:num_context], whole[num_context:]


@torch.no_grad()
def reference_loglikelihood(model, tokenizer, context, continuation) -> tuple[float, bool]:
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = context_ids + continuation_ids
    logprobs = model(torch.tensor([ids])).logits[0, :, :len(tokenizer)].float().log_softmax(-1)
    rows = logprobs[len(context_ids) - 1:len(ids) - 1]
    targets = torch.tensor(continuation_ids)
    total = rows.gather(1, targets[:, None]).sum().item()
    return total, bool((rows.argmax(-1) == targets).all())


@torch.no_grad()
def reference_generation(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(MAX_GEN_TOKS):
        token = int(model(torch.tensor([ids + new])).logits[0, -1, :len(tokenizer)].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    text = tokenizer.decode(new)
    for stop in UNTIL:
        text = text.split(stop)[0]
    return text


@pytest.fixture(scope="module")
def bundled_server():
    proc = ServerProcess(default_model_dir())
    yield proc
    proc.stop()


def test_lm_eval_local_completions_matches_transformers(bundled_server, tmp_path):
    from transformers import AutoTokenizer
    model_dir = default_model_dir()
    model_name = httpx.get(bundled_server.url + "/v1/models").json()["data"][0]["id"]
    write_tasks(tmp_path)
    samples, results = run_lm_eval(bundled_server, model_name, model_dir, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = hf_model(model_dir)

    mc, right, greedy_seen = samples["codeinfer_mc"], [], False
    assert len(mc) == len(MC_DOCS)
    for doc, sample in zip(MC_DOCS, mc):
        expected = [reference_loglikelihood(model, tokenizer, doc["context"], " " + choice)
                    for choice in doc["choices"]]
        got = [resp[0] for resp in sample["resps"]]  # (loglikelihood, is_greedy), logged as strings
        assert [float(ll) for ll, _ in got] == pytest.approx([ll for ll, _ in expected], abs=1e-3)
        assert [greedy == "True" for _, greedy in got] == [greedy for _, greedy in expected]
        greedy_seen |= any(greedy for _, greedy in expected)
        best = max(range(len(expected)), key=lambda i: expected[i][0])
        right.append(best == doc["answer"])
        assert sample["acc"] == float(right[-1])
    assert 0 < sum(right) < len(right) and greedy_seen  # so that a wrong score would show
    assert results["codeinfer_mc"]["acc,none"] == pytest.approx(sum(right) / len(right))

    gen, matches = samples["codeinfer_gen"], []
    assert len(gen) == len(GEN_DOCS)
    for doc, sample in zip(GEN_DOCS, gen):
        expected = reference_generation(model, tokenizer, doc["prompt"])
        assert sample["filtered_resps"] == [expected], textwrap.shorten(repr(sample), 500)
        matches.append(expected == doc["target"])
        assert sample["exact_match"] == float(matches[-1])
    assert 0 < sum(matches) < len(matches)
    assert results["codeinfer_gen"]["exact_match,none"] == pytest.approx(sum(matches) / len(matches))
