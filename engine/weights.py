"""Checkpoint loading: build the model on the meta device, materialise it, fill it from safetensors
through the model's mapping table, and fail with every missing, unexpected or mis-shaped tensor.

Nothing is unpickled here; `convert_bin_to_safetensors` reads .bin files with weights_only=True."""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.models import MODEL_REGISTRY


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"model: shards named in {index.name} are missing: {missing}")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    if list(model_dir.glob("*.bin")):
        raise ValueError(f"model: {model_dir} has only pytorch .bin weights; convert them with "
                         f"`codeinfer convert {model_dir} DST` (no pickle is loaded at serve time)")
    raise ValueError(f"model: no model.safetensors or model.safetensors.index.json in {model_dir}")


# safetensors dtype names -> torch dtypes (the ones checkpoints of these models use).
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: Path):
    """Yield (name, tensor) of a .safetensors file, read tensor by tensor with plain file reads: the
    file is never mapped, so its pages do not add to the process's resident memory while the model
    is built (the fp32 CodeGen-350M file alone is 1.6 GB). Layout: 8-byte little-endian header size,
    a JSON header {name: {dtype, shape, data_offsets: [begin, end]}}, then the data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < header_len <= size - 8:
            raise ValueError(f"header size {header_len} does not fit a {size}-byte file")
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            begin, end = info["data_offsets"]
            shape = list(info["shape"])
            if dtype is None:
                raise ValueError(f"{name}: unsupported dtype {info['dtype']}")
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * dtype.itemsize or not 0 <= begin <= end <= size - data_start:
                raise ValueError(f"{name}: data offsets {begin}..{end} do not fit its shape or the file")
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(data_start + begin)
            if f.readinto(raw.numpy()) != end - begin:
                raise ValueError(f"{name}: file ends inside its data")
            yield name, raw.view(dtype).view(shape)


def iter_checkpoint(model_dir: Path):
    """Yield (name, tensor) of every tensor of the checkpoint, shard by shard."""
    for path in safetensors_files(model_dir):
        try:
            yield from read_safetensors(path)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"model: cannot read {path} (truncated or corrupt?): {e}") from None


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
    (dtype int8 quantises it there), and its float parameters are let go: the pages of a block are
    only touched when its weights are copied in, so the whole model never sits in memory in `dtype`
    (CodeGen-16B: 32 GB of bf16 for 16 GB of int8)."""
    model_cls = MODEL_REGISTRY[config.architecture]
    with torch.device("meta"):
        model = model_cls(config, ops)
    model = model.to(dtype).to_empty(device=device)
    model.tie_weights()  # to_empty allocates shared parameters apart: share them again
    params = dict(model.named_parameters())
    # Packed parameters (q, k, v of GPT-Neo) are filled shard by shard: track which shards arrived.
    filled: dict[str, set] = {name: set() for name in params}
    block_of = {name: int(name.split(".")[1]) for name in params if name.startswith("layers.")}
    waiting = {i: {n for n, b in block_of.items() if b == i} for i in range(len(model.layers))}
    unexpected, bad_shapes = [], []
    for name, tensor in iter_checkpoint(Path(model_dir)):
        target = model.map_weight(name)
        if target == ():
            continue
        if target is None or target[0] not in params:
            unexpected.append(name)
            continue
        local, shard = target
        tensor = model.transform_weight(local, tensor)
        param = params[local]
        dest = param.data if shard is None else param.data.chunk(3, dim=0)[shard]
        if tuple(dest.shape) != tuple(tensor.shape):
            bad_shapes.append(f"{name}: checkpoint {tuple(tensor.shape)}, model {tuple(dest.shape)}")
            continue
        dest.copy_(tensor)
        filled[local].add(shard)
        block = block_of.get(local)
        if prepare_block is not None and block is not None and (None in filled[local] or len(filled[local]) == 3):
            waiting[block].discard(local)
            if not waiting[block]:  # every weight of the block is in: prepare it, drop its floats
                prepare_block(model.layers[block])
                for n in [n for n, b in block_of.items() if b == block]:
                    del params[n], filled[n]
                del param, dest, tensor
                release_freed_memory()
    missing = [n for n, got in filled.items() if not got or (None not in got and len(got) < 3)]
    problems = []
    if missing:
        problems.append(f"missing tensors: {sorted(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {sorted(unexpected)}")
    if bad_shapes:
        problems.append(f"wrong shapes: {bad_shapes}")
    if problems:
        raise ValueError(f"model: checkpoint {model_dir} does not match {config.architecture} "
                         f"config: " + "; ".join(problems))
    model.post_load()
    return model.eval()


def convert_bin_to_safetensors(src: str | Path, dst: str | Path) -> list[Path]:
    """Convert a pytorch_model*.bin checkpoint folder to safetensors (tensors only, weights_only)."""
    src, dst = Path(src), Path(dst)
    bins = sorted(src.glob("pytorch_model*.bin"))
    if not bins:
        raise ValueError(f"src: no pytorch_model*.bin files in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for path in bins:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"src: cannot load {path} as plain tensors: {e}") from None
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"src: {path} entry {name!r} is not a tensor")
            tensors[name] = tensor.contiguous()
    # safetensors refuses shared storage: clone tensors that alias another (tied embeddings).
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if tensor.data_ptr() in seen:
            tensors[name] = tensor.clone()
        seen.add(tensors[name].data_ptr())
    out = dst / "model.safetensors"
    save_file(tensors, str(out), metadata={"format": "pt"})
    written = [out]
    for aux in src.iterdir():
        if aux.suffix in (".json", ".txt", ".model") and not (dst / aux.name).exists():
            (dst / aux.name).write_bytes(aux.read_bytes())
            written.append(dst / aux.name)
    return written
