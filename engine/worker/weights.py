"""Checkpoint loading: check the safetensors headers against the model built on the meta device
(every missing, unexpected, mis-shaped or non-float tensor, before anything is allocated), then
materialise the model and fill it through its mapping table.

A checkpoint folder is untrusted input: headers are validated field by field, shard names must stay
inside the folder, and nothing is unpickled (.bin files are converted first, weights_only:
engine/worker/convert.py)."""
from __future__ import annotations

import ctypes
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, read_json_object
from ..kernel_package import host_memory
from ..models import MODEL_REGISTRY

# safetensors dtype names -> torch dtypes (the ones checkpoints of these models use).
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# A header is a few KB per hundred tensors; past this a file is hostile, not a checkpoint (and
# parsing a 100 MB JSON header costs about a GB).
MAX_HEADER_BYTES = 16 << 20
MAX_RANK = 8
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a .safetensors header, checked to lie inside its file."""
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of its first byte, from the start of the file
    nbytes: int


def _shard_files(index: Path) -> list[str]:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: field 'weight_map' must be a non-empty object of tensor name -> "
                         f"shard file")
    names = set(weight_map.values())
    # A shard is a file of this folder: "/etc/x" or "../x" would make the loader read elsewhere.
    bad = [n for n in names if not isinstance(n, str) or n in ("", ".", "..") or "/" in n or "\\" in n]
    if bad:
        raise ValueError(f"{index}: field 'weight_map' names shards that are not plain file names "
                         f"of the folder: {', '.join(sorted(map(repr, bad))[:3])}")
    return sorted(names)


def has_safetensors(model_dir: Path) -> bool:
    """Whether the folder has safetensors weights: one file or a shard index."""
    return (model_dir / SINGLE_FILE).is_file() or (model_dir / INDEX_FILE).is_file()


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = [model_dir / name for name in _shard_files(index)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"model: shards named in {index} are missing: {missing}")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    if list(model_dir.glob("*.bin")):
        raise ValueError(f"model: {model_dir} has only pytorch .bin weights; load it with LLM or "
                         f"the CLI (they convert it once, tensors only) or convert it with "
                         f"`codeinfer convert {model_dir} DST`")
    raise ValueError(f"model: no model.safetensors or {INDEX_FILE} in {model_dir}")


def _entry(path: Path, name: str, info, data_start: int, size: int) -> TensorEntry:
    try:
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
    except (TypeError, KeyError, ValueError):  # not a dict, unhashable or unknown dtype, not 2 offsets
        raise ValueError(f"{name}: header entry needs a known dtype, a shape and 2 data_offsets, "
                         f"got {str(info)[:80]}") from None
    if len(shape) > MAX_RANK or not all(type(d) is int and d >= 0 for d in (*shape, begin, end)):
        raise ValueError(f"{name}: shape and data_offsets must be non-negative integers")
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes or not 0 <= begin <= end <= size - data_start:
        raise ValueError(f"{name}: data offsets {begin}..{end} do not fit its shape or the file")
    return TensorEntry(path, dtype, shape, data_start + begin, nbytes)


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of a .safetensors file, from its header alone. Layout: 8-byte little-endian
    header size, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}}, then the data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < header_len <= size - 8:
            raise ValueError(f"header size {header_len} does not fit a {size}-byte file")
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(f"header size {header_len} is over the {MAX_HEADER_BYTES}-byte limit")
        header = json.loads(f.read(header_len))
    if not isinstance(header, dict):
        raise ValueError(f"header must be a JSON object, got a {type(header).__name__}")
    header.pop("__metadata__", None)
    return {name: _entry(path, name, info, 8 + header_len, size) for name, info in header.items()}


def read_tensors(path: Path, entries: list[tuple[str, TensorEntry]]):
    """Yield (name, tensor) of entries of the file `path`, read with plain file reads: the file is
    never mapped, so its pages do not add to the process's resident memory while the model is built
    (the fp32 CodeGen-350M file alone is 1.6 GB). Entries in offset order read it front to back."""
    with open(path, "rb") as f:
        for name, entry in entries:
            raw = host_memory.empty((entry.nbytes,), torch.uint8)
            f.seek(entry.offset)
            if f.readinto(raw.numpy()) != entry.nbytes:
                raise ValueError(f"{name}: file ends inside its data")
            yield name, raw.view(entry.dtype).view(entry.shape)


def read_safetensors(path: Path):
    """Yield (name, tensor) of every tensor of a .safetensors file, in file order."""
    yield from read_tensors(path, sorted(read_header(path).items(), key=lambda kv: kv[1].offset))


def _corrupt(path: Path, e: Exception) -> ValueError:
    return ValueError(f"model: cannot read {path} (truncated or corrupt?): {type(e).__name__}: {e}")


def checkpoint_tensors(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint, from the headers of its shards (no tensor data is read)."""
    tensors: dict[str, TensorEntry] = {}
    for path in safetensors_files(model_dir):
        try:
            header = read_header(path)
        except (ValueError, OSError, RecursionError) as e:  # RecursionError: a deeply nested header
            raise _corrupt(path, e) from None
        twice = sorted(tensors.keys() & header.keys())
        if twice:
            raise ValueError(f"model: {path} repeats tensors of another shard: {twice[:5]}")
        tensors.update(header)
    return tensors


def _destination(param: torch.Tensor, shard: int | None) -> torch.Tensor:
    """The rows of `param` a checkpoint tensor fills: all, or one third of a packed q, k, v."""
    return param if shard is None else param.chunk(3, dim=0)[shard]


def match_weights(model: torch.nn.Module, tensors: dict[str, TensorEntry],
                  model_dir: Path) -> dict[str, tuple[str, int | None]]:
    """{checkpoint name: (parameter, shard)} for every tensor to load, from the headers alone (the
    model may be on the meta device; transform_weight keeps shapes). ValueError listing every
    missing, unexpected, mis-shaped or non-float tensor."""
    params = dict(model.named_parameters())
    filled: dict[str, set] = {name: set() for name in params}
    targets, unexpected, bad_shapes, bad_dtypes = {}, [], [], []
    for name, entry in tensors.items():
        target = model.map_weight(name)
        if target == ():
            continue
        if target is None or target[0] not in params:
            unexpected.append(name)
            continue
        expected = tuple(_destination(params[target[0]], target[1]).shape)
        if entry.shape != expected:
            bad_shapes.append(f"{name}: checkpoint {entry.shape}, model {expected}")
        elif entry.dtype not in WEIGHT_DTYPES:
            bad_dtypes.append(f"{name}: {entry.dtype}")
        else:
            targets[name] = target
            filled[target[0]].add(target[1])
    # A parameter is in when it came whole (shard None) or as all 3 shards of a packed q, k, v.
    missing = [n for n, got in filled.items() if None not in got and len(got) < 3]
    problems = [f"{what}: {_listing(names)}" for what, names in (
        ("missing tensors", sorted(missing)), ("unexpected tensors", sorted(unexpected)),
        ("not floating-point", sorted(bad_dtypes)), ("wrong shapes", bad_shapes)) if names]
    if problems:
        raise ValueError(f"model: checkpoint {model_dir} does not match its config.json "
                         f"({model.config.architecture}): " + "; ".join(problems))
    return targets


def _listing(items: list[str], most: int = 8) -> str:
    """A list for an error message: a config off by 60 layers misses 500 tensors."""
    return str(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def check_checkpoint(config: ModelConfig, model_dir: Path) -> None:
    """ValueError unless the safetensors headers hold exactly the tensors `config` implies, with
    their shapes: checked with the model on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = MODEL_REGISTRY[config.architecture](config, None)
    match_weights(model, checkpoint_tensors(Path(model_dir)), model_dir)


def progress_bar(iterable, total: int, desc: str, unit: str):
    """iterable with a tqdm bar on stderr when stderr is a terminal (a person is watching a large
    checkpoint load); nothing at all when it is piped, logged or captured (tests)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty())


def release_freed_memory() -> None:
    """Give the pages of freed heap blocks back to the OS (glibc keeps them resident otherwise: the
    float weights of a prepared block would stay in RSS under the int8 copies). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_model(config: ModelConfig, model_dir: str | Path, ops, dtype: torch.dtype,
               device: torch.device, prepare_block=None) -> torch.nn.Module:
    """Instantiate config.architecture and load its weights in `dtype` on `device`.

    prepare_block: called once with each of model.layers as soon as all its weights have arrived
    (dtype int8 quantises it there), and likewise with an untied lm_head (in a holder module), and
    their float parameters are let go: the pages of a block are only touched when its weights are
    copied in, so the whole model never sits in memory in `dtype` (CodeGen-16B: 32 GB of bf16 for
    16 GB of int8), nor the float lm_head next to its packed copy."""
    model_dir = Path(model_dir)
    with torch.device("meta"):
        model = MODEL_REGISTRY[config.architecture](config, ops)
    tensors = checkpoint_tensors(model_dir)
    targets = match_weights(model, tensors, model_dir)  # every check before the first allocation
    _materialise(model, dtype, device)
    model.tie_weights()  # shared parameters were allocated apart: share them again
    named = progress_bar(_read_targets(tensors, targets), len(targets), "Loading weights", "tensor")
    _fill(model, named, targets, prepare_block)
    model.post_load()
    return model.eval()


def _materialise(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """model.to(dtype).to_empty(device=device), by hand: every parameter and buffer an uninitialised
    tensor on `device`, floating ones in `dtype`. torch's empty_like of a meta tensor runs through its
    Python refs, whose first use imports sympy: seconds of start-up for nothing."""
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for name, t in slots.items():
                if t is None:
                    continue
                new = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
                slots[name] = torch.nn.Parameter(new, t.requires_grad) if slots is module._parameters else new


def _read_targets(tensors: dict[str, TensorEntry], targets: dict):
    """(name, tensor) of every tensor to load, file by file, each file front to back."""
    by_file: dict[Path, list[tuple[str, TensorEntry]]] = {}
    for name in sorted(targets, key=lambda n: tensors[n].offset):
        by_file.setdefault(tensors[name].path, []).append((name, tensors[name]))
    for path, entries in by_file.items():
        try:
            yield from read_tensors(path, entries)
        except (ValueError, OSError) as e:  # the file changed or shrank since its header was read
            raise _corrupt(path, e) from None


def _unit_of(model: torch.nn.Module, name: str):
    """The unit a parameter is prepared with: its block (layers.N) or the top-level nn.Linear that
    holds it (the lm_head); None for the rest (embeddings, final norm), prepared after loading."""
    first, _, rest = name.partition(".")
    if first == "layers":
        return int(rest.split(".")[0])
    child = getattr(model, first, None)
    return first if type(child) is torch.nn.Linear else None


def _prepare_unit(model: torch.nn.Module, unit, prepare_block) -> None:
    if isinstance(unit, int):
        prepare_block(model.layers[unit])
        return
    # A top-level linear (the lm_head): prepared inside a holder under its own name, so the lm_head
    # rules (fp32 logits, int8 under int4) apply, without touching the blocks still loading.
    holder = torch.nn.Module()
    holder.add_module(unit, getattr(model, unit))
    prepare_block(holder)
    setattr(model, unit, getattr(holder, unit))


def _store(param: torch.nn.Parameter, shard: int | None, value: torch.Tensor) -> None:
    """Put a checkpoint tensor into its parameter: a whole one already in the parameter's dtype,
    device and layout becomes its storage (the parameter's own pages are never touched, and a
    quantised block never pays for a second float copy); anything else is copied in."""
    if (shard is None and value.dtype == param.dtype and value.device == param.device
            and value.shape == param.shape and value.is_contiguous()):
        param.data = value
    else:
        _destination(param.data, shard).copy_(value)


def _fill(model: torch.nn.Module, named_tensors, targets: dict, prepare_block) -> None:
    """Copy each (name, tensor) into its parameter; prepare each block (and the lm_head) whose
    weights are all in, and let its float parameters go."""
    params = dict(model.named_parameters())
    # Pieces still to come per parameter: a packed q, k, v of GPT-Neo comes in 3.
    left = Counter(local for local, _ in targets.values())
    unit_of = {name: unit for name in params if (unit := _unit_of(model, name)) is not None}
    for name, tensor in named_tensors:
        local, shard = targets[name]
        _store(params[local], shard, model.transform_weight(local, tensor))
        left[local] -= 1
        unit = unit_of.get(local)
        if prepare_block is None or unit is None or left[local]:
            continue
        unit_params = [n for n, u in unit_of.items() if u == unit]
        if not any(left[n] for n in unit_params):  # the unit is in: prepare it, drop its floats
            del tensor
            _prepare_unit(model, unit, prepare_block)
            for n in unit_params:
                del params[n], unit_of[n]
            release_freed_memory()