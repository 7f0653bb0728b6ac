"""EngineArgs: every engine option in one place (its default, its check and its help text).

`LLM(**kwargs)`, `LLMEngine(**kwargs)` / `LLMEngine.from_engine_args(args)` and the CLI's engine
options (`EngineArgs.add_cli_args`, `EngineArgs.from_cli_args`) are all built from these fields.
Pure Python: building or checking one loads no torch. The checks that need the machine (is there
a CUDA device, can this backend run there) happen when the engine resolves the options."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

from .speculative import SpeculativeConfig

DTYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int4")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")
KV_CACHE_DTYPES = ("auto", "int8")
DEFAULT_MODEL = "codegen-tiny-py"  # engine/assets/<name>: the bundled model

_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "kb": 1000, "mib": 1 << 20, "mb": 1000 ** 2, "gib": 1 << 30,
          "gb": 1000 ** 3, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5G', '1000000' -> bytes (k/m/g alone are binary units)."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 512MiB, 1000000)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return int(value)


def json_object(text: str) -> dict:
    """A CLI JSON object (--speculative-config)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _option(default, help: str, *, choices: tuple | None = None, flag: str | None = None,
            metavar: str | None = None, parse=None, minimum: int | None = None,
            nargs: str | None = None):
    """A field of EngineArgs. minimum: an integer >= minimum (None default: or None); flag: the
    CLI flag when it is not --field-name; parse: the CLI's type (default: that of the default);
    nargs: argparse's, for a field that takes a list."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag,
                                            "metavar": metavar, "parse": parse, "minimum": minimum,
                                            "nargs": nargs})


@dataclass
class EngineArgs:
    model: str | None = _option(
        None, "checkpoint folder (config.json + safetensors or pytorch_model.bin + tokenizer) or "
              "Hugging Face Hub id (org/name: fetched into the Hugging Face cache, HF_HOME / "
              "HF_HUB_CACHE; only the cache with HF_HUB_OFFLINE=1); default: the bundled "
              f"{DEFAULT_MODEL} model")
    revision: str | None = _option(
        None, "Hub branch, tag or commit of a Hub id `model` (default: main)")
    dtype: str = _option(
        "auto", "weight/activation dtype (auto = int8 on the CPU for models with 50M+ linear weights, "
                "else bfloat16; int8 = int8 linear weights and per-token int8 GEMM inputs, bfloat16 "
                "elsewhere; int4 = the same with group-wise 4-bit weights in the blocks (CPU): the "
                "fastest decode of large models)", choices=DTYPES)
    device: str = _option("auto", "where the model runs (auto: cuda when there is one, else cpu)",
                          choices=DEVICES)
    attention_backend: str = _option(
        "auto", "kernels for every op (embedding, rotary and KV write, attention, packed linears): "
                "torch reference, C++ CPU, or Triton (auto: triton on CUDA, cpu on CPU)",
        choices=ATTENTION_BACKENDS)
    block_size: int = _option(16, "tokens per KV-cache block", minimum=1)
    num_kv_blocks: int | None = _option(
        None, "KV-cache blocks (default: as many as --kv-cache-memory allows, else sized from the "
              "model's context as that says)", parse=int, minimum=1)
    max_num_seqs: int = _option(256, "most sequences in one step", minimum=1)
    max_num_batched_tokens: int = _option(2048, "token budget per step", minimum=1)
    max_model_len: int | None = _option(
        None, "context length in tokens, at most the model's (default: the model's): longer "
              "prompts are refused, generation stops with finish_reason \"length\" there",
        parse=int, minimum=1)
    enable_prefix_caching: bool = _option(
        True, "prefix caching (full KV blocks of an earlier identical prompt prefix are reused)",
        flag="--no-prefix-caching")
    seed: int = _option(0, "random seed (sampling is reproducible for a given seed)")
    kv_cache_dtype: str = _option(
        "auto", "KV-cache element type (auto = the activation dtype; int8 = int8 rows with a scale "
                "each: half the memory and bandwidth of bf16, CPU kernels only)",
        choices=KV_CACHE_DTYPES)
    kv_cache_memory_bytes: int | None = _option(
        None, "most memory the KV cache may take, e.g. 2GiB, 512MiB or bytes (default: room for 16 "
              "full contexts of the model, or --max-num-seqs if fewer, within 2GiB and 25% of the "
              "available RAM on the CPU; --max-num-seqs contexts within 85% of free GPU memory; "
              "never less than one full context). The cache is allocated and zeroed at start-up",
        flag="--kv-cache-memory", metavar="SIZE", parse=parse_bytes,
        minimum=1)
    num_threads: int | None = _option(
        None, "CPU threads for the kernels (default: one per core, or OMP_NUM_THREADS); fewer "
              "leave cores to other work on a shared machine", flag="--threads", metavar="N",
        parse=int, minimum=1)
    dynamic_threads: bool = _option(
        True, "fit the CPU kernels' thread count to the cores other work leaves free, read at "
              "each step from the kernel's count of runnable threads (at most --threads; a shared "
              "machine then loses a core without stalling the other thread at every barrier)",
        flag="--no-dynamic-threads")
    prepared_weights_cache: bool = _option(
        True, "keep a model's quantised or packed CPU weights (int8, int4, bf16; models whose "
              "prepared weights take 256 MiB or more) in the codeinfer cache "
              "($CODEINFER_CACHE_ROOT, else ~/.cache/codeinfer) so later loads of the same "
              "checkpoint read them instead of quantising again; never fills the disk to its "
              "last 2 GiB", flag="--no-prepared-weights-cache")
    served_model_name: str | list[str] | None = _option(
        None, "the names the server answers to: /v1/models lists them all and a request's "
              "`model` must be one of them (default: --model as given, or the bundled model's "
              "name)", metavar="NAME", parse=str, nargs="+")
    speculative_config: dict | None = _option(
        None, "speculative decoding, vLLM's dict as JSON: {\"method\": \"ngram\", "
              "\"num_speculative_tokens\": K, \"prompt_lookup_max\": N, \"prompt_lookup_min\": M} "
              "drafts up to K tokens per step from the request's own text (lossless: the output is "
              "that of plain decoding); optional \"disable_by_batch_size\" (default 4) and "
              "\"adaptive\" (default true)", metavar="JSON", parse=json_object)

    def __post_init__(self):
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.strip()):
            raise ValueError(f"revision must be a non-empty string or None, got {self.revision!r}")
        for f in dataclasses.fields(self):
            low, value = f.metadata["minimum"], getattr(self, f.name)
            if low is None:
                continue
            if f.default is None and value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{f.name} must be a positive integer or None, got {value!r}")
            if f.default is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{f.name} must be an integer >= {low}, got {value!r}")
        names = self.served_model_name
        names = [names] if isinstance(names, str) else names
        if names is not None and (not isinstance(names, (list, tuple)) or not names or not all(
                isinstance(n, str) and n.strip() for n in names)):
            raise ValueError(f"served_model_name must be a non-empty name or list of names, "
                             f"got {self.served_model_name!r}")

        self.speculative()  # checks it

    def speculative(self) -> SpeculativeConfig | None:
        """speculative_config checked (ValueError naming the key), None when off."""
        return SpeculativeConfig.from_option(self.speculative_config)

    def served_model_names(self) -> list[str]:
        """The names the server answers to, as vLLM picks them: served_model_name (every alias),
        else `model` as given (a Hub id stays the id, a folder the path as typed), else the bundled
        model's name."""
        names = self.served_model_name or self.model or DEFAULT_MODEL
        return [names] if isinstance(names, str) else list(names)

    def resolve_max_model_len(self, model_context: int) -> int:
        """The context the engine works in: max_model_len, or the model's when None."""
        if self.max_model_len is None:
            return model_context
        if self.max_model_len > model_context:
            raise ValueError(f"max_model_len ({self.max_model_len}) is above the model's context "
                             f"of {model_context} tokens")
        return self.max_model_len

    # ------------------------------------------------------------------ the CLI
    @staticmethod
    def cli_flag(f: dataclasses.Field) -> str:
        return f.metadata["flag"] or "--" + f.name.replace("_", "-")

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        """The "engine" argument group: one flag per field (a True flag turns into --no-...)."""
        group = parser.add_argument_group("engine")
        for f in dataclasses.fields(cls):
            meta, flag = f.metadata, cls.cli_flag(f)
            if f.default is True:  # the flag turns it off; no "(default: True)" in the help
                parser.set_defaults(**{f.name: True})  # first: it would set the action's default
                group.add_argument(flag, dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help="turn off " + meta["help"])
                continue
            kwargs = {"type": meta["parse"] or type(f.default)} if f.default is not None or meta["parse"] else {}
            group.add_argument(flag, dest=f.name, default=f.default, choices=meta["choices"],
                               metavar=meta["metavar"], nargs=meta["nargs"],
                               help=meta["help"].replace("%", "%%"), **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        """The options as keyword arguments (LLM(**args.to_dict()), JSON)."""
        return dataclasses.asdict(self)


def options_table() -> str:
    """The README's table of engine options, made from the fields (tests/test_engine_args.py checks
    that the README holds exactly this; print it with `python -m engine.engine_args`)."""
    rows = ["| option | CLI flag | default | what it sets |", "|---|---|---|---|"]
    for f in dataclasses.fields(EngineArgs):
        choices = f" ({' / '.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
        rows.append(f"| `{f.name}` | `{EngineArgs.cli_flag(f)}` | `{f.default!r}` | "
                    f"{f.metadata['help']}{choices} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(options_table())
