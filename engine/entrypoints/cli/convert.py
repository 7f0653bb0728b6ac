"""`codeinfer convert`: pytorch_model.bin checkpoint -> safetensors (weights_only loading).

The source folder is untrusted. Only the files a checkpoint needs are read and copied
(checkpoint_files()); one of those, or a .bin, whose resolved path leaves the source folder (a
symlink to /etc/shadow, to ../x) is refused before anything is written; copies are never more
readable than their source, and nothing is written through a symlink in the destination."""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import stat
from pathlib import Path

from engine.config import MAX_JSON_BYTES  # no config or tokenizer file is bigger

HELP = (
    "Read SRC/pytorch_model*.bin with torch.load(weights_only=True) (tensors only, nothing else is "
    "unpickled) and write DST/model.safetensors plus the files a checkpoint needs: config.json, "
    "generation_config.json, the tokenizer files and CodeCLM's replicated_tokens_map.pkl (files "
    "already in DST are kept). Nothing else in SRC is read. A needed file or .bin that is a symlink "
    "resolving outside SRC (or, for a Hugging Face cache snapshot <repo>/snapshots/<rev>, outside "
    "<repo>/blobs) is refused and nothing is written. Copies keep at most the source's permission "
    "bits (the umask still applies).")


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a pytorch_model.bin checkpoint to safetensors",
                              description=HELP)
    p.add_argument("src", help="checkpoint folder with pytorch_model*.bin")
    p.add_argument("dst", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in convert_bin_to_safetensors(args.src, args.dst):
        print(path)
    return 0


def checkpoint_files() -> tuple[str, ...]:
    """The files besides the weights that the loader reads (engine/config.py, engine/tokenizer.py,
    engine/codeclm.py) or transformers wants next to them (special_tokens_map.json)."""
    from engine.codeclm import MAP_FILE
    return ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", MAP_FILE)


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


def _load_bins(bins: list[Path]) -> dict:
    """{name: contiguous tensor} of every .bin, loaded with weights_only (no code can run)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for path in bins:
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
    roots = _allowed_roots(src)
    bins = [_source(p, roots) for p in sorted(src.glob("pytorch_model*.bin"))]
    if not bins:
        raise ValueError(f"src: no pytorch_model*.bin files in {src}")
    aux = {name: _source(src / name, roots, MAX_JSON_BYTES) for name in checkpoint_files()}
    tensors = _load_bins(bins)
    mode = 0o777
    for path in bins:  # the output is no more readable than any of its inputs
        mode &= os.stat(path).st_mode
    try:
        dst.mkdir(parents=True, exist_ok=True)
        written = [dst / "model.safetensors"]
        _save(tensors, written[0], mode & 0o666)
        for name, path in aux.items():
            if path is not None and not os.path.lexists(dst / name):
                _copy(path, dst / name)
                written.append(dst / name)
    except OSError as e:
        raise ValueError(f"dst: cannot write {e.filename or dst}: {e.strerror or e}") from None
    return written
