"""The prepared-weights cache of the CPU path: a model whose linears are quantised (int8, int4) or
packed (bf16) at load is saved once, as safetensors, under cache_root()/prepared; a later load of
the same checkpoint in the same mode reads those tensors at file-read speed instead of reading the
float checkpoint and quantising it again.

An entry is used only while it matches: its marker holds the checkpoint's files (path, size,
modification time), the mode, the engine version and FORMAT_VERSION (bumped whenever a packed
layout changes). Its tensors go through the loader's checked safetensors reader (nothing is
unpickled) and must be exactly the tensors of the mode's module structure, with their shapes and
dtypes; anything else is a stale or foreign entry, logged and rebuilt. The structure is built on
the meta device (the packers' reference versions give the shapes), then filled from the file."""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, read_json_object
from ..models import MODEL_REGISTRY
from .convert import cache_root
from .weights import SAFETENSORS_DTYPES, read_header, safetensors_files

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # <linux/mman.h>; Python 3.11 lacks it
WEIGHTS = "prepared.safetensors"
MARKER = "codeinfer-prepared.json"  # written last: an entry without it is incomplete
# Room an entry leaves on its disk: a cache must not be what fills it.
FREE_MARGIN_BYTES = 2 << 30
# Models whose prepared tensors are smaller load in about a second anyway: no entry for them.
MIN_CACHED_BYTES = 256 << 20


def _fingerprint(model_dir: Path, mode: str) -> dict:
    from .. import __version__

    files = safetensors_files(model_dir) + [model_dir / "config.json"]
    return {"format": FORMAT_VERSION, "engine": __version__, "mode": mode, "source": str(model_dir.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def entry_dir(model_dir: Path, mode: str) -> Path:
    """The cache folder of (checkpoint folder, mode)."""
    digest = hashlib.sha256(f"{model_dir.resolve()}\0{mode}".encode()).hexdigest()[:16]
    return cache_root() / "prepared" / f"{model_dir.name}-{mode}-{digest}"


class _MetaPacking:
    """`ops` with its load-time quantisers answering with meta tensors of their outputs' shapes
    (ops.packed_outputs): the structure of a quantised model, with nothing computed."""

    def __init__(self, ops):
        self.ops = ops

    def __getattr__(self, name: str):
        return getattr(self.ops, name)

    def quantize_pack_int8(self, weight: torch.Tensor):
        return self.ops.packed_outputs("int8", *weight.shape, device="meta")

    def quantize_pack_int4(self, weight: torch.Tensor, group_size: int = 64, asymmetric: bool = True):
        return self.ops.packed_outputs("int4", *weight.shape, group_size, device="meta")


def _named_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """{name: (module, attribute, tensor)} of every parameter and persistent buffer, a tensor
    shared by several names under its first name only."""
    out, seen = {}, set()
    for prefix, module in model.named_modules():
        for slots, persistent in ((module._parameters, None), (module._buffers, module._non_persistent_buffers_set)):
            for attr, t in slots.items():
                if t is None or (persistent is not None and attr in persistent) or id(t) in seen:
                    continue
                seen.add(id(t))
                out[f"{prefix}.{attr}" if prefix else attr] = (module, attr, t)
    return out


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file of CPU tensors, written tensor by tensor (no copy in memory). The data
    starts 64-byte aligned and tensors go by alignment (sizes that are multiples of 64 bytes first,
    then by element size), so every tensor of the mapped file is aligned for its dtype with no
    gaps between them."""
    names = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
    nbytes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    order = sorted(tensors, key=lambda n: (nbytes[n] % 64 != 0, -tensors[n].element_size()))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes[name]]}
        offset += nbytes[name]
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 64)
    with open(path, "xb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name in order:
            f.write(memoryview(tensors[name].detach().contiguous().view(-1).view(torch.uint8).numpy()))


def _map_tensors(path: Path, header: dict) -> dict[str, torch.Tensor]:
    """{name: tensor} viewing a private, prefaulted mapping of the file: the model's tensors are
    the page cache's pages (no copy, no zeroing; clean pages the kernel can drop and re-read).
    Entries are replaced by renaming a new folder over the old, never written in place, so a
    mapped file does not change under a running engine."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        # Writable for torch.frombuffer, private so nothing reaches the file; read faults map the
        # page cache's pages (a write would copy one). MAP_POPULATE would take write faults here,
        # copying the whole file: the pages are prefaulted for reading instead (Linux 5.14+).
        mapped = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        mapped.madvise(MADV_POPULATE_READ)
    except OSError:  # an older kernel: the first step faults them in
        pass
    out = {}
    for name, e in header.items():
        if e.offset % e.dtype.itemsize:
            raise ValueError(f"{name}: data at offset {e.offset} is not aligned for {e.dtype}")
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=e.nbytes, offset=e.offset) if e.nbytes else \
            torch.empty(0, dtype=torch.uint8)
        out[name] = raw.view(e.dtype).view(e.shape)
    return out


def save(model: nn.Module, model_dir: Path, mode: str) -> Path | None:
    """Write the prepared model's tensors as the entry of (model_dir, mode); None when they are
    under MIN_CACHED_BYTES, and (logged) when the disk lacks room or the folder cannot be written."""
    out = entry_dir(model_dir, mode)
    tensors = {name: t for name, (_, _, t) in _named_tensors(model).items()}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if nbytes < MIN_CACHED_BYTES:
        return None
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if shutil.disk_usage(out.parent).free < nbytes + FREE_MARGIN_BYTES:
            logger.info("not caching the prepared weights (%.1f GB): too little free disk in %s",
                        nbytes / 1e9, out.parent)
            return None
        tmp.mkdir(mode=0o700)
        _write(tmp / WEIGHTS, tensors)
        (tmp / MARKER).write_text(json.dumps(_fingerprint(model_dir, mode)))
        shutil.rmtree(out, ignore_errors=True)  # a stale entry of changed files
        os.rename(tmp, out)
    except OSError as e:
        logger.warning("cannot cache the prepared weights in %s (CODEINFER_CACHE_ROOT puts them "
                       "elsewhere): %s", out, e)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(config: ModelConfig, model_dir: Path, mode: str, dtype: torch.dtype, ops, prepare) -> nn.Module | None:
    """The model of (model_dir, mode) from its cache entry, or None when there is no matching
    entry. dtype: the float parameters' (as load_model's); prepare(model, ops=ops): the mode's
    linear replacement (engine/worker/model_runner.py)."""
    folder = entry_dir(model_dir, mode)
    try:
        if read_json_object(folder / MARKER) != _fingerprint(model_dir, mode):
            raise ValueError("it was written for other files or another version")
        with torch.device("meta"):
            model = MODEL_REGISTRY[config.architecture](config, ops).to(dtype)
        model.tie_weights()
        prepare(model, ops=_MetaPacking(ops))
        _fill(model, folder / WEIGHTS)
    except (ValueError, OSError, RecursionError) as e:
        if (folder / MARKER).exists():
            logger.warning("ignoring the prepared-weights cache entry %s: %s", folder, e)
        return None
    model.post_load()
    return model.eval()


def _fill(model: nn.Module, path: Path) -> None:
    """Every tensor of the meta model from the file, which must hold exactly those (names, shapes,
    dtypes); the modules' ops back from _MetaPacking to the backend's."""
    want = _named_tensors(model)
    header = read_header(path)
    wrong = sorted(n for n, (_, _, t) in want.items()
                   if n not in header or header[n].shape != tuple(t.shape) or header[n].dtype != t.dtype)
    extra = sorted(header.keys() - want.keys())
    if wrong or extra:
        raise ValueError(f"its tensors do not match the model: missing or different {wrong[:4]}, "
                         f"unexpected {extra[:4]}")
    aliases: dict[int, list[tuple[nn.Module, str]]] = {}
    for _, module in model.named_modules():
        for slots in (module._parameters, module._buffers):
            for attr, t in slots.items():
                if t is not None:
                    aliases.setdefault(id(t), []).append((module, attr))
    for name, tensor in _map_tensors(path, header).items():
        _, _, old = want[name]
        new = nn.Parameter(tensor, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else tensor
        for module, attr in aliases[id(old)]:
            (module._parameters if attr in module._parameters else module._buffers)[attr] = new
    for module in model.modules():
        if isinstance(getattr(module, "ops", None), _MetaPacking):
            module.ops = module.ops.ops
