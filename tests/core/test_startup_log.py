"""The engine's start-up summary: one INFO line of what was built, "auto" choices resolved."""
import logging
import re

import torch

from engine.core.llm_engine import LLMEngine


def summary(caplog, **options) -> tuple[str, LLMEngine]:
    with caplog.at_level(logging.INFO, logger="engine.core.llm_engine"):
        engine = LLMEngine(**options)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loaded ")]
    caplog.clear()
    return line, engine


def test_summary_names_what_was_built(tiny_codegen_dir, caplog):
    line, engine = summary(caplog, model=str(tiny_codegen_dir), dtype="float32", num_kv_blocks=48,
                           block_size=8)
    gib = 48 * engine.runner.block_bytes() / 2 ** 30
    assert re.fullmatch(
        re.escape(f"Loaded {tiny_codegen_dir} (CodeGenForCausalLM) in ") + r"\d+\.\d\d" + re.escape(
            f" s on cpu: dtype float32, KV cache float32 (auto), 48 blocks of 8 tokens ({gib:.2f} "
            f"GiB), max context {engine.config.max_position_embeddings} tokens, threads "
            f"{threads(engine)}, attention backend cpu (auto)"), line), line


def threads(engine: LLMEngine) -> str:
    most = torch.get_num_threads()
    return f"1-{most} (dynamic)" if engine.threads.dynamic else str(most)


def test_summary_of_the_bundled_model_resolves_auto(caplog):
    line, engine = summary(caplog, attention_backend="torch", kv_cache_dtype="int8",
                           num_kv_blocks=16)
    assert line.startswith("Loaded codegen-tiny-py (CodeGenForCausalLM) in ")
    resolved = str(engine.dtype).removeprefix("torch.")
    assert f"dtype {resolved} (auto), KV cache int8, 16 blocks" in line
    assert line.endswith("attention backend torch")
