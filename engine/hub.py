"""What `model` names: a local checkpoint folder, or a Hugging Face Hub id (`org/name`) fetched into
(or found in) the Hugging Face cache, as transformers and vLLM do. The cache is huggingface_hub's:
HF_HOME / HF_HUB_CACHE say where it is, HF_HUB_OFFLINE=1 forbids the network, and `revision` picks
a branch, tag or commit. Only the files the engine reads are fetched: the side files
(engine/config.py `checkpoint_files`) and the safetensors weights, or the pytorch_model*.bin
weights when a repository has no safetensors (converted once, tensors only: engine/worker/convert.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import BIN_WEIGHTS, checkpoint_files
from .worker.weights import INDEX_FILE, has_safetensors

SAFETENSORS_PATTERNS = ("model*.safetensors", INDEX_FILE)
BIN_PATTERNS = (BIN_WEIGHTS, "pytorch_model.bin.index.json")


def resolve_model(model: str | os.PathLike, revision: str | None = None) -> tuple[Path, str]:
    """(folder of config.json + safetensors the engine loads, the model's name) of `model`: a
    local folder (its name), else a Hub id (the id). A folder with only pytorch .bin weights is
    converted once into the codeinfer cache. ValueError naming `model` for anything else."""
    if not str(model).strip():  # Path("") is the working directory
        raise ValueError("model: must be a checkpoint folder or a Hub id, got an empty string")
    path = Path(model)
    if path.is_dir():
        name = path.resolve().name
    elif isinstance(model, str) and is_hub_id(model):
        path, name = download(model, revision), model
    else:
        raise ValueError(f"model: {str(model)!r} is neither a folder nor a Hugging Face Hub id "
                         f"(org/name)")
    if not has_safetensors(path) and any(path.glob(BIN_WEIGHTS)):
        from .worker.convert import converted_folder
        path = converted_folder(path)
    return path, name


def is_hub_id(text: str) -> bool:
    """Whether text reads as a Hub model id `org/name` (huggingface_hub's rules for each part)."""
    if text.count("/") != 1:
        return False
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(text)
    except ValueError:  # HFValidationError
        return False
    return True


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of repo_id at revision in the Hugging Face cache, holding the files the
    engine reads; downloaded unless it is cached or HF_HUB_OFFLINE is set."""
    side_files = list(checkpoint_files())
    folder = _snapshot(repo_id, revision, side_files + list(SAFETENSORS_PATTERNS))
    if not has_safetensors(folder):  # an older checkpoint: pytorch_model.bin only
        folder = _snapshot(repo_id, revision, side_files + list(BIN_PATTERNS))
    return folder


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      library_name="codeinfer"))
    except LocalEntryNotFoundError as e:  # not cached, and offline or the Hub is unreachable
        why = ("HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE
               else f"the Hub cannot be reached ({' '.join(str(e).split())[:160]})")
        raise ValueError(
            f"model: {repo_id!r} is not a local folder, and Hub model {repo_id}{at} is not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}) while {why}; fetch it with "
            f"`{fetch_command(repo_id, revision)}` (or `huggingface-cli download ...`), or give "
            f"a checkpoint folder") from None
    except RevisionNotFoundError:
        raise ValueError(f"revision: Hub model {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:  # also a gated or private repository without a token
        raise ValueError(f"model: {repo_id!r} is not a local folder, and the Hub has no model "
                         f"{repo_id} that this machine may read (private or gated ones need "
                         f"`hf auth login`)") from None
    except (HfHubHTTPError, OSError) as e:  # the Hub failed mid-download, or the disk did
        raise ValueError(f"model: cannot fetch Hub model {repo_id}{at}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}") from None


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    """The shell command that puts repo_id's files into the Hugging Face cache."""
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
