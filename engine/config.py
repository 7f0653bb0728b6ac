"""Model configuration read from a checkpoint folder (config.json, generation_config.json), every
field type- and range-checked before it sizes anything: a checkpoint folder is untrusted input.
Only the architectures in SUPPORTED_ARCHITECTURES are accepted."""
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


# Upper bounds far above any checkpoint of these families (CodeGen-16B: 34 layers, n_embd 6144,
# vocab 51200, 2048 positions). The weights bound most sizes (their shapes are checked against the
# safetensors headers before anything is allocated); these bound what no weight backs: the list of
# layers built on the meta device, the per-layer window list and CodeGen's rotary table.
MAX_LAYERS = 256  # also bounds the meta-device build that checks the weights (~2 ms a layer)
MAX_HIDDEN = 1 << 16
MAX_INTERMEDIATE = 1 << 18
MAX_VOCAB = 1 << 22
MAX_POSITIONS = 1 << 20
MAX_ROTARY_TABLE_BYTES = 1 << 26  # [n_positions, rotary_dim] fp32: 262144 positions at rotary_dim 64
# A config or tokenizer file past this is not one (real ones are KB; tokenizer.json a few MB): a
# sparse file could otherwise claim terabytes that read_text would try to hold.
MAX_JSON_BYTES = 64 << 20
# CodeGen's qkv_proj rows are 4 chunks of [q | v | k] (engine/models/codegen.py): n_embd splits in 4.
CODEGEN_QKV_CHUNKS = 4
_REQUIRED = object()


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, {} if there is no such file. Anything else (unreadable, too big,
    not UTF-8, not JSON, not an object) is a ValueError naming the file."""
    if not path.is_file():
        return {}
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got a {type(data).__name__}")
    return data


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed, range-checked reads of one JSON object. JSON null counts as absent; ints must be real
    ints (not bools, not 64.0). Every error is a ValueError naming the file and the field."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def error(self, key: str, why: str) -> ValueError:
        return ValueError(f"{self.path}: field {key!r} {why}")

    def get(self, key: str, default=_REQUIRED):
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is missing")
            return default
        return value

    def integer(self, key: str, default=_REQUIRED, low: int = 1, high: int = MAX_HIDDEN) -> int | None:
        value = self.get(key, default)
        if value is None:
            return None
        if type(value) is not int:
            raise self.error(key, f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise self.error(key, f"must be in [{low}, {high}], got {value}")
        return value

    def eps(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if type(value) not in (int, float) or not 0 < value < 1:  # also refuses NaN and Infinity
            raise self.error(key, f"must be a number in (0, 1), got {_show(value)}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if type(value) is not bool:
            raise self.error(key, f"must be true or false, got {_show(value)}")
        return value

    def choice(self, key: str, default: str, choices) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, f"must be one of {sorted(choices)}, got {_show(value)}")
        return value

    def token_id(self, key: str, vocab_size: int) -> int | None:
        """A special token id, or the first of a list of them (eos_token_id may be a list)."""
        value = self.get(key, None)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(type(i) is int and 0 <= i < vocab_size for i in ids):
            raise self.error(key, f"must be token ids in [0, {vocab_size}), got {_show(value)}")
        return ids[0] if ids else None


def _activation(f: _Fields) -> str:
    from engine.layers.linear import ACTIVATIONS  # the implemented ones are the only valid names
    return f.choice("activation_function", "gelu_new", ACTIVATIONS)


def _heads(f: _Fields, hidden_key: str, heads_key: str) -> tuple[int, int]:
    hidden, num_heads = f.integer(hidden_key), f.integer(heads_key)
    if hidden % num_heads:
        raise f.error(heads_key, f"{num_heads} does not divide {hidden_key} {hidden}")
    return hidden, num_heads


def _attention_kinds(f: _Fields, num_layers: int) -> list[str]:
    """GPT-Neo's attention_types [[["global", "local"], 6]] -> ["global", "local", ...] of length
    num_layers, which a saved attention_layers (transformers runs that one) must equal."""
    types = f.get("attention_types", [[["global"], num_layers]])
    if not isinstance(types, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], list) and type(t[1]) is int
            and t[1] >= 1 and all(k in ("global", "local") for k in t[0]) for t in types):
        raise f.error("attention_types", 'must be [[["global" | "local", ...], repeat >= 1], ...]')
    count = sum(len(pattern) * repeat for pattern, repeat in types)  # before expanding: no 10**12 list
    if count != num_layers:
        raise f.error("attention_types", f"describe {count} layers, num_layers is {num_layers}")
    kinds = [kind for pattern, repeat in types for kind in pattern * repeat]
    if f.get("attention_layers", kinds) != kinds:
        raise f.error("attention_layers", "disagrees with attention_types")
    return kinds


def _gpt_neo(f: _Fields) -> ModelConfig:
    hidden, num_heads = _heads(f, "hidden_size", "num_heads")
    num_layers = f.integer("num_layers", high=MAX_LAYERS)
    kinds = _attention_kinds(f, num_layers)
    window = f.integer("window_size", 256, high=MAX_POSITIONS)
    return ModelConfig(
        architecture="GPTNeoForCausalLM", vocab_size=f.integer("vocab_size", high=MAX_VOCAB),
        hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
        intermediate_size=f.integer("intermediate_size", 4 * hidden, high=MAX_INTERMEDIATE),
        max_position_embeddings=f.integer("max_position_embeddings", high=MAX_POSITIONS),
        layer_norm_eps=f.eps("layer_norm_epsilon", 1e-5), activation=_activation(f),
        tie_word_embeddings=f.boolean("tie_word_embeddings", True),
        layer_windows=[window if k == "local" else 0 for k in kinds],
        attention_scale=1.0,  # GPT-Neo does not scale scores by 1/sqrt(head_dim).
        learned_positions=True,
    )


def _codegen(f: _Fields) -> ModelConfig:
    hidden, num_heads = _heads(f, "n_embd", "n_head")
    if hidden % CODEGEN_QKV_CHUNKS:
        raise f.error("n_embd", f"must be a multiple of {CODEGEN_QKV_CHUNKS} (qkv_proj chunks), got {hidden}")
    head_dim = hidden // num_heads
    rotary_dim = f.integer("rotary_dim", head_dim, high=head_dim)  # null: rotate the whole head
    if rotary_dim % 2:
        raise f.error("rotary_dim", f"must be even (it rotates pairs), got {rotary_dim}")
    n_ctx = f.integer("n_ctx", 2048, high=MAX_POSITIONS)
    max_positions = f.integer("n_positions", n_ctx, high=MAX_POSITIONS)
    if max_positions * rotary_dim * 4 > MAX_ROTARY_TABLE_BYTES:
        raise f.error("n_positions", f"{max_positions} x rotary_dim {rotary_dim} needs a rotary table "
                                     f"over {MAX_ROTARY_TABLE_BYTES} bytes")
    num_layers = f.integer("n_layer", high=MAX_LAYERS)
    return ModelConfig(
        architecture="CodeGenForCausalLM", vocab_size=f.integer("vocab_size", high=MAX_VOCAB),
        hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
        intermediate_size=f.integer("n_inner", 4 * hidden, high=MAX_INTERMEDIATE),
        max_position_embeddings=max_positions,
        layer_norm_eps=f.eps("layer_norm_epsilon", 1e-5), activation=_activation(f),
        tie_word_embeddings=f.boolean("tie_word_embeddings", False),
        layer_windows=[0] * num_layers,
        attention_scale=head_dim ** -0.5,
        rotary_dim=rotary_dim, rotary_interleaved=True,
    )


def _architecture(f: _Fields) -> str:
    archs = f.get("architectures", [])
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise f.error("architectures", f"must be a list of class names, got {_show(archs)}")
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"unsupported architecture {_show(archs or f.data.get('model_type'))} in "
                         f"{f.path}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read and check config.json (+ generation_config.json for special token ids) of a checkpoint,
    and check that its safetensors headers hold exactly the tensors this config implies, before
    anything is allocated: a config that passes describes the weights that are there."""
    from engine.worker.weights import check_checkpoint  # weights imports this module

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model: {str(model_dir)!r} is not a directory")
    cfg = _Fields(read_json_object(model_dir / "config.json"), model_dir / "config.json")
    if not cfg.data:
        raise ValueError(f"model: no config.json in {model_dir}")
    config = _gpt_neo(cfg) if _architecture(cfg) == "GPTNeoForCausalLM" else _codegen(cfg)
    gen_path = model_dir / "generation_config.json"
    gen = _Fields(read_json_object(gen_path), gen_path)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # generation_config.json wins
        from_config, from_gen = cfg.token_id(key, config.vocab_size), gen.token_id(key, config.vocab_size)
        setattr(config, key, from_config if gen.get(key, None) is None else from_gen)
    config.name = model_dir.resolve().name
    check_checkpoint(config, model_dir)
    return config
