"""pytorch_model*.bin checkpoints -> safetensors: `codeinfer convert SRC DST`, and the conversion
cache that lets `LLM(model=...)` load a .bin-only folder or Hub repository (many older checkpoints,
e.g. PyCodeGPT) directly.

The .bin files are read with torch.load(weights_only=True): torch's restricted unpickler builds
tensors and plain containers only, so a pickle that would call anything (os.system, eval) is
refused without running it, and a file that holds more than named tensors is refused too. The
source folder is untrusted. Only the files a checkpoint needs are read and copied
(engine/config.py `checkpoint_files`); one of those, or a .bin, whose resolved path leaves the
source folder (a symlink to /etc/shadow, to ../x) is refused before anything is written; copies
are never more readable than their source, and nothing is written through a symlink in the
destination."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..config import BIN_WEIGHTS, MAX_JSON_BYTES, checkpoint_files, read_json_object
from .weights import SINGLE_FILE, progress_bar

logger = logging.getLogger(__name__)

# Written last into a converted folder: the source it came from, so a later load reuses it only
# while the source files are the ones converted.
MARKER = "codeinfer-converted.json"


def cache_root() -> Path:
    """Where codeinfer keeps what it derives from checkpoints: $CODEINFER_CACHE_ROOT, else
    $XDG_CACHE_HOME/codeinfer, else ~/.cache/codeinfer."""
    root = os.environ.get("CODEINFER_CACHE_ROOT")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "codeinfer"


# ------------------------------------------------------------------------- reading the source
def _allowed_roots(src: Path) -> list[Path]:
    """Where a file of src may resolve to: inside src or, for a Hugging Face cache snapshot
    (whose files are links to ../../blobs/<hash>), inside that repo's blobs folder."""
    root = src.resolve()
    return [root, root.parent.parent / "blobs"] if root.parent.name == "snapshots" else [root]


def _source(path: Path, roots: list[Path], max_bytes: int | None = None) -> Path | None:
    """The regular file behind path (links resolved), None if there is nothing there."""
    if not os.path.lexists(path):
        return None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ValueError(f"src: cannot resolve {path}: {e}") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValueError(f"src: {path} resolves to {resolved}, outside {roots[0]}; refusing to read it")
    if not resolved.is_file() or (max_bytes is not None and resolved.stat().st_size > max_bytes):
        limit = f" of at most {max_bytes} bytes" if max_bytes else ""
        raise ValueError(f"src: {path} is not a regular file{limit}")
    return resolved


def _source_files(src: Path) -> tuple[list[Path], dict[str, Path | None]]:
    """(the .bin files, {side file name: its file or None}) of src, every one checked."""
    roots = _allowed_roots(src)
    bins = [_source(p, roots) for p in sorted(src.glob(BIN_WEIGHTS))]
    if not bins:
        raise ValueError(f"src: no {BIN_WEIGHTS} files in {src}")
    return bins, {name: _source(src / name, roots, MAX_JSON_BYTES) for name in checkpoint_files()}


def _load_bins(bins: list[Path]) -> dict:
    """{name: contiguous tensor} of every .bin, loaded with weights_only (no code can run)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for path in progress_bar(bins, total=len(bins), desc="Converting .bin", unit="file"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"src: cannot load {path} as plain tensors: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"src: {path} holds a {type(state).__name__}, not a dict of tensors")
        for name, tensor in state.items():
            if not (isinstance(name, str) and isinstance(tensor, torch.Tensor)
                    and tensor.layout == torch.strided):
                raise ValueError(f"src: {path} entry {str(name)[:80]!r} is not a named dense tensor")
            if name in tensors:
                raise ValueError(f"src: {path} repeats tensor {name!r} of another .bin file")
            tensors[name] = tensor.contiguous()
    # safetensors refuses shared storage: clone tensors that alias another (tied embeddings).
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if tensor.data_ptr() in seen:
            tensors[name] = tensor.clone()
        seen.add(tensors[name].data_ptr())
    return tensors


# ------------------------------------------------------------------------- writing the copy
def _create(path: Path, mode: int) -> int:
    """fd of a new file with at most `mode`'s permission bits, less the umask; never opened through
    a symlink or over an existing file (O_EXCL)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.S_IMODE(mode) & 0o777)


def _copy(src: Path, dst: Path) -> None:
    with open(os.open(src, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fin:  # src is resolved: no link
        info = os.fstat(fin.fileno())
        if not stat.S_ISREG(info.st_mode):  # swapped since _source checked it
            raise ValueError(f"src: {src} is not a regular file")
        with open(_create(dst, info.st_mode), "wb") as fout:
            shutil.copyfileobj(fin, fout)


def _save(tensors: dict, out: Path, mode: int) -> None:
    """Write model.safetensors beside `out` and rename it over `out`: a symlink there is replaced,
    not written through."""
    from safetensors.torch import save_file

    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}.tmp")
    os.close(_create(tmp, mode))  # save_file truncates it and keeps its mode
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert_bin_to_safetensors(src: str | Path, dst: str | Path) -> list[Path]:
    """Convert a pytorch_model*.bin checkpoint folder to safetensors; returns the files written."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ValueError(f"src: {str(src)!r} is not a directory")
    bins, aux = _source_files(src)
    tensors = _load_bins(bins)
    mode = 0o777
    for path in bins:  # the output is no more readable than any of its inputs
        mode &= os.stat(path).st_mode
    try:
        dst.mkdir(parents=True, exist_ok=True)
        written = [dst / SINGLE_FILE]
        _save(tensors, written[0], mode & 0o666)
        for name, path in aux.items():
            if path is not None and not os.path.lexists(dst / name):
                _copy(path, dst / name)
                written.append(dst / name)
    except OSError as e:
        raise ValueError(f"dst: cannot write {e.filename or dst}: {e.strerror or e}") from None
    return written


# ------------------------------------------------------------------------- the conversion cache
def _fingerprint(src: Path) -> dict:
    """What a conversion of src depends on: its path and each source file's size and mtime."""
    bins, aux = _source_files(src)
    files = [p for p in bins + list(aux.values()) if p is not None]
    return {"source": str(src), "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _marker(folder: Path) -> dict:
    try:
        return read_json_object(folder / MARKER)
    except ValueError:  # a torn or foreign file: the folder is redone
        return {}


def converted_folder(src: str | Path) -> Path:
    """A safetensors copy of the .bin checkpoint src in the codeinfer cache (cache_root()/converted):
    converted on the first call, reused while src's files stay the same."""
    src = Path(src).resolve()
    want = _fingerprint(src)
    digest = hashlib.sha256(str(src).encode()).hexdigest()[:16]
    out = cache_root() / "converted" / f"{src.name}-{digest}"
    if _marker(out) == want:
        return out
    logger.warning("%s has only pytorch .bin weights: converting them to safetensors in %s (tensors "
                   "only, nothing else is unpickled; later loads reuse it)", src, out)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_bin_to_safetensors(src, tmp)
        (tmp / MARKER).write_text(json.dumps(want))
        if out.exists() and _marker(out) != want:  # a conversion of files that have changed
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            if _marker(out) != want:  # not a twin that another process just converted
                raise
    except OSError as e:
        raise ValueError(f"model: cannot write the converted checkpoint to {out} (CODEINFER_CACHE_ROOT "
                         f"puts it elsewhere): {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
