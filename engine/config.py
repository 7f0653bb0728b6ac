"""Model configuration read from a checkpoint folder (config.json, generation_config.json), every
field type- and range-checked before it sizes anything: a checkpoint folder is untrusted input.
Each model file (engine/models/) translates its own Hugging Face config (`from_hf_config`); this
module holds the shared dataclass, the checked reads and the lookup by `architectures`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CacheConfig:
    """KV-cache options (LLM / LLMEngine arguments of the same names)."""
    block_size: int = 16
    num_kv_blocks: int | None = None           # None: as many as kv_cache_memory_bytes allows
    kv_cache_dtype: str = "auto"               # "auto" (the activation dtype) | "int8"
    kv_cache_memory_bytes: int | None = None   # cap on cache + scales; None: a fraction of free memory
    max_model_len: int | None = None           # tokens of a full context; None: the model's


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
MAX_LAYERS = 256  # also bounds the meta-device build that checks the weights (time per layer)
MAX_HIDDEN = 1 << 16
MAX_INTERMEDIATE = 1 << 18
MAX_VOCAB = 1 << 22
MAX_POSITIONS = 1 << 20
MAX_ROTARY_TABLE_BYTES = 1 << 26  # [n_positions, rotary_dim] fp32: 262144 positions at rotary_dim 64
# A config or tokenizer file past this is not one (real ones are KB; tokenizer.json a few MB): a
# sparse file could otherwise claim terabytes that read_text would try to hold.
MAX_JSON_BYTES = 64 << 20
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


class ConfigFields:
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

    def heads(self, hidden_key: str, heads_key: str) -> tuple[int, int]:
        """(hidden size, number of heads), the heads dividing the hidden size."""
        hidden, num_heads = self.integer(hidden_key), self.integer(heads_key)
        if hidden % num_heads:
            raise self.error(heads_key, f"{num_heads} does not divide {hidden_key} {hidden}")
        return hidden, num_heads


BIN_WEIGHTS = "pytorch_model*.bin"  # an older checkpoint's weights (engine/worker/convert.py)


def checkpoint_files() -> tuple[str, ...]:
    """The files of a checkpoint besides its weights: those the loader reads (this module,
    engine/tokenizer.py, engine/codeclm.py) or transformers wants next to them
    (special_tokens_map.json). `codeinfer convert` copies them; a Hub id fetches them."""
    from .codeclm import MAP_FILE  # codeclm -> tokenizer -> this module
    return ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", MAP_FILE)


def _model_class(f: ConfigFields):
    """The model class (engine/models/) of the first supported name in `architectures`."""
    from .models import MODEL_REGISTRY

    archs = f.get("architectures", [])
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise f.error("architectures", f"must be a list of class names, got {_show(archs)}")
    arch = next((a for a in archs if a in MODEL_REGISTRY), None)
    if arch is None:
        raise ValueError(f"unsupported architecture {_show(archs or f.data.get('model_type'))} in "
                         f"{f.path}; supported: {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[arch]


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read and check config.json (+ generation_config.json for special token ids) of a checkpoint,
    and check that its safetensors headers hold exactly the tensors this config implies, before
    anything is allocated: a config that passes describes the weights that are there."""
    from .worker.weights import check_checkpoint  # weights imports this module

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model: {str(model_dir)!r} is not a directory")
    cfg = ConfigFields(read_json_object(model_dir / "config.json"), model_dir / "config.json")
    if not cfg.data:
        raise ValueError(f"model: no config.json in {model_dir}")
    config = _model_class(cfg).from_hf_config(cfg)
    gen_path = model_dir / "generation_config.json"
    gen = ConfigFields(read_json_object(gen_path), gen_path)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # generation_config.json wins
        from_config, from_gen = cfg.token_id(key, config.vocab_size), gen.token_id(key, config.vocab_size)
        setattr(config, key, from_config if gen.get(key, None) is None else from_gen)
    config.name = model_dir.resolve().name
    check_checkpoint(config, model_dir)
    return config
