"""The bundled default model (engine/assets/codegen-tiny-py) loads with transformers, its tokenizer
round-trips Python, and its loss on held-out standard-library files is well below uniform.

The held-out files are the ones scripts/train_default_model.py left out of training (listed in the
asset's README); they are read from this interpreter's standard library at test time.
"""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest

ASSET = Path(__file__).resolve().parents[1] / "engine" / "assets" / "codegen-tiny-py"
# Held out by the training script's split (int(sha1(relpath)[:8], 16) % 1000 < 40).
HELDOUT_FILES = ["textwrap.py", "gettext.py", "bdb.py"]
MAX_TOKENS_PER_FILE = 384

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _heldout_listed_in_readme():
    readme = (ASSET / "README.md").read_text()
    return [f for f in HELDOUT_FILES if f"`{f}`" in readme]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ASSET / "tokenizer.json"))


@pytest.fixture(scope="module")
def model():
    from transformers import CodeGenForCausalLM

    m = CodeGenForCausalLM.from_pretrained(ASSET, dtype=torch.float32)
    m.eval()
    return m


def test_asset_files_and_config():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "README.md"):
        assert (ASSET / name).is_file(), name
    cfg = json.loads((ASSET / "config.json").read_text())
    assert cfg["architectures"] == ["CodeGenForCausalLM"]
    assert cfg["model_type"] == "codegen"
    assert cfg["rotary_dim"] < cfg["n_embd"] // cfg["n_head"]
    assert cfg["n_ctx"] == cfg["n_positions"]
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == 0
    size = sum(f.stat().st_size for f in ASSET.iterdir() if f.is_file())
    assert size < 20e6, size


def test_tokenizer_round_trip(tokenizer):
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    snippet = (
        "def greet(name: str) -> str:\n"
        "\t# tab-indented comment, non-ASCII: héllo wörld ✓ 日本\n"
        "    return f\"Hello, {name}!\"  \n\n"
        "for i in range(10):\n        print(i ** 2, end=' ')\r\n"
    )
    enc = tokenizer.encode(snippet)
    assert 0 not in enc.ids  # no BOS/EOS added
    assert tokenizer.decode(enc.ids, skip_special_tokens=False) == snippet
    # A prompt ending in a space tokenizes as a prefix of the longer text.
    assert tokenizer.encode("def ").ids == tokenizer.encode("def greet").ids[:2]


def test_heldout_loss_well_below_uniform(model, tokenizer):
    files = _heldout_listed_in_readme()
    assert files, "README no longer lists the test's held-out files; update HELDOUT_FILES"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / f).read_text(encoding="utf-8") for f in files if (stdlib / f).is_file()]
    if not texts:
        pytest.skip(f"held-out stdlib files not found under {stdlib}")
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[0] + tokenizer.encode(text).ids[:MAX_TOKENS_PER_FILE - 1]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    loss = total / count
    uniform = math.log(model.config.vocab_size)
    assert loss < 0.45 * uniform, (loss, uniform)  # trained: ~0.36 x uniform over all held-out files
