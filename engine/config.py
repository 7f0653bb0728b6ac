"""Model configuration read from a checkpoint folder (config.json, generation_config.json,
tokenizer_config.json). Only the architectures in SUPPORTED_ARCHITECTURES are accepted."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("GPTNeoForCausalLM", "CodeGenForCausalLM")


@dataclass
class CacheConfig:
    """KV-cache options (LLM / LLMEngine arguments of the same names)."""
    block_size: int = 16
    num_kv_blocks: int | None = None           # None: as many as kv_cache_memory_bytes allows
    kv_cache_dtype: str = "auto"               # "auto" (the activation dtype) | "int8"
    kv_cache_memory_bytes: int | None = None   # cap on cache + scales; None: a fraction of free memory


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    activation: str = "gelu_new"
    tie_word_embeddings: bool = False
    # Attention variants: per-layer window (0 = global), scale, rotary.
    layer_windows: list[int] = field(default_factory=list)
    attention_scale: float = 1.0
    rotary_dim: int = 0
    rotary_interleaved: bool = True
    learned_positions: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    name: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _first_id(value) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _expand_attention_types(attention_types: list, num_layers: int) -> list[str]:
    """GPT-Neo's [[["global", "local"], 6]] -> ["global", "local", ...] of length num_layers."""
    kinds: list[str] = []
    for pattern, repeat in attention_types:
        kinds.extend(list(pattern) * repeat)
    if len(kinds) != num_layers:
        raise ValueError(f"attention_types describe {len(kinds)} layers, config has {num_layers}")
    return kinds


def _gpt_neo(cfg: dict) -> ModelConfig:
    hidden, num_layers = cfg["hidden_size"], cfg["num_layers"]
    kinds = _expand_attention_types(cfg.get("attention_types", [[["global"], num_layers]]), num_layers)
    window = cfg.get("window_size", 256)
    bad = sorted(set(kinds) - {"global", "local"})
    if bad:
        raise ValueError(f"unsupported GPT-Neo attention type(s) {bad}; expected global or local")
    return ModelConfig(
        architecture="GPTNeoForCausalLM", vocab_size=cfg["vocab_size"], hidden_size=hidden,
        num_layers=num_layers, num_heads=cfg["num_heads"],
        intermediate_size=cfg.get("intermediate_size") or 4 * hidden,
        max_position_embeddings=cfg["max_position_embeddings"],
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=cfg.get("activation_function", "gelu_new"),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        layer_windows=[window if k == "local" else 0 for k in kinds],
        attention_scale=1.0,  # GPT-Neo does not scale scores by 1/sqrt(head_dim).
        learned_positions=True,
    )


def _codegen(cfg: dict) -> ModelConfig:
    hidden, num_heads = cfg["n_embd"], cfg["n_head"]
    head_dim = hidden // num_heads
    rotary_dim = cfg.get("rotary_dim") or head_dim
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
    return ModelConfig(
        architecture="CodeGenForCausalLM", vocab_size=cfg["vocab_size"], hidden_size=hidden,
        num_layers=cfg["n_layer"], num_heads=num_heads,
        intermediate_size=cfg.get("n_inner") or 4 * hidden,
        max_position_embeddings=cfg.get("n_positions", cfg.get("n_ctx", 2048)),
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=cfg.get("activation_function", "gelu_new"),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        layer_windows=[0] * cfg["n_layer"],
        attention_scale=head_dim ** -0.5,
        rotary_dim=rotary_dim, rotary_interleaved=True,
    )


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read config.json (+ generation/tokenizer configs for special token ids) of a checkpoint."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model: {str(model_dir)!r} is not a directory")
    cfg = _read_json(model_dir / "config.json")
    if not cfg:
        raise ValueError(f"model: no config.json in {model_dir}")
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"unsupported architecture {archs or cfg.get('model_type')!r} in "
                         f"{model_dir / 'config.json'}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        config = _gpt_neo(cfg) if arch == "GPTNeoForCausalLM" else _codegen(cfg)
    except KeyError as e:
        raise ValueError(f"{model_dir / 'config.json'}: missing field {e.args[0]!r} for {arch}") from None
    gen = _read_json(model_dir / "generation_config.json")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = _first_id(gen.get(key, cfg.get(key)))
        setattr(config, key, value)
    config.name = model_dir.resolve().name
    return config
