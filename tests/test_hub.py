"""`model` as a Hugging Face Hub id: resolved through a Hugging Face cache laid out as
huggingface_hub lays it out (models--org--name/{refs, snapshots/<commit>, blobs}), offline: no test
reaches the network."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, SamplingParams
from engine.hub import BIN_PATTERNS, SAFETENSORS_PATTERNS, download, is_hub_id, resolve_model

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def add_snapshot(cache, repo_id: str, checkpoint, commit: str, ref: str | None = "main"):
    """checkpoint's files as snapshot `commit` of repo_id: links to content-named blobs, `ref`
    (a branch or tag) pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in checkpoint.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        (snapshot / f.name).symlink_to(f"../../blobs/{digest}")
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline. huggingface_hub reads its environment once, when it
    is imported: its constants are set too."""
    from huggingface_hub import constants
    cache = tmp_path / "hf-home" / "hub"  # where HF_HOME puts it
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _greedy(model, **options):
    llm = LLM(model, dtype="float32", attention_backend="torch", **options)
    return llm.engine.model_name, llm.generate("def add(a, b):", GREEDY)[0].outputs[0].token_ids


def test_hub_id_resolves_from_the_cache(hub_cache, tiny_codegen_dir):
    snapshot = add_snapshot(hub_cache, "org/tiny-codegen", tiny_codegen_dir, COMMIT_A)
    assert resolve_model("org/tiny-codegen") == (snapshot, "org/tiny-codegen")
    name, tokens = _greedy("org/tiny-codegen")
    assert name == "org/tiny-codegen"  # the id, not the commit folder's name
    assert tokens == _greedy(str(tiny_codegen_dir))[1]


def test_revision_picks_another_snapshot(hub_cache, tiny_codegen_dir, tiny_gptneo_dir):
    add_snapshot(hub_cache, "org/tiny", tiny_codegen_dir, COMMIT_A)
    second = add_snapshot(hub_cache, "org/tiny", tiny_gptneo_dir, COMMIT_B, ref="v2")
    assert resolve_model("org/tiny", revision="v2")[0] == second  # a tag
    assert resolve_model("org/tiny", revision=COMMIT_B)[0] == second  # a commit
    assert LLM("org/tiny", revision="v2").engine.config.architecture == "GPTNeoForCausalLM"
    assert LLM("org/tiny").engine.config.architecture == "CodeGenForCausalLM"


@pytest.mark.parametrize("revision, command", [(None, "`hf download org/absent`"),
                                               ("v9", "`hf download org/absent --revision v9`")])
def test_offline_without_a_cached_copy_says_so_and_how_to_fetch_it(hub_cache, revision, command):
    with pytest.raises(ValueError) as info:
        LLM("org/absent", revision=revision)
    message = str(info.value)
    assert message.startswith("model: 'org/absent' is not a local folder")
    assert "not in the Hugging Face cache" in message and str(hub_cache) in message
    assert "HF_HUB_OFFLINE=1" in message and command in message


def test_a_cached_repo_without_the_revision_is_not_found_either(hub_cache, tiny_codegen_dir):
    add_snapshot(hub_cache, "org/tiny", tiny_codegen_dir, COMMIT_A)
    with pytest.raises(ValueError, match="org/tiny at revision 'v2' is not in the Hugging Face cache"):
        resolve_model("org/tiny", revision="v2")


@pytest.mark.parametrize("model", ["", "tiny", "a/b/c", "org/bad name", "org/na--me", "org/name.",
                                   "~/models/x", "/no/such/folder", "-org/x", "org/" + "x" * 97])
def test_neither_a_folder_nor_a_hub_id_is_a_value_error_naming_model(hub_cache, model):
    with pytest.raises(ValueError, match="^model: "):
        LLM(model)


def test_hub_id_rules():
    assert is_hub_id("Salesforce/codegen-350M-mono") and is_hub_id("org/name_1.5")
    assert not any(map(is_hub_id, ["codegen", "a/b/c", "org/", "/name", "org/na me", "org/x--y"]))


def test_revision_is_checked():
    from engine.engine_args import EngineArgs
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="^revision must be a non-empty string"):
            EngineArgs(revision=bad)


def test_a_bin_only_hub_repo_loads_through_a_conversion(hub_cache, tiny_gptneo_dir, tmp_path):
    plain = tmp_path / "bin"
    plain.mkdir()
    torch.save(load_file(str(tiny_gptneo_dir / "model.safetensors")), plain / "pytorch_model.bin")
    for f in tiny_gptneo_dir.glob("*.json"):
        shutil.copy(f, plain / f.name)
    add_snapshot(hub_cache, "org/old-neo", plain, COMMIT_A)
    folder, name = resolve_model("org/old-neo")
    assert name == "org/old-neo" and (folder / "model.safetensors").is_file() and folder.is_relative_to(
        tmp_path.parent / "codeinfer-cache")
    assert _greedy("org/old-neo")[1] == _greedy(str(tiny_gptneo_dir))[1]


def test_only_the_files_the_engine_reads_are_fetched(tmp_path, monkeypatch, tiny_codegen_dir):
    # Online, as snapshot_download is called: the side files (CodeCLM's token map too) and the
    # safetensors weights; the .bin weights only when there are no safetensors.
    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=(), **kw):
        calls.append(list(allow_patterns))
        folder = tmp_path / f"{repo_id.replace('/', '-')}-{len(calls)}"
        shutil.copytree(tiny_codegen_dir, folder)
        if repo_id == "org/old" and len(calls) == 2:  # a repo of .bin weights only
            (folder / "model.safetensors").unlink()
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    download("org/new")
    assert len(calls) == 1 and "replicated_tokens_map.pkl" in calls[0] and "tokenizer.json" in calls[0]
    assert set(SAFETENSORS_PATTERNS) <= set(calls[0]) and not set(BIN_PATTERNS) & set(calls[0])
    assert download("org/old") == tmp_path / "org-old-3"  # no safetensors in the first: the .bin
    assert calls[1] == calls[0] and set(BIN_PATTERNS) <= set(calls[2])
    assert not set(SAFETENSORS_PATTERNS) & set(calls[2])


def _cli(args, cache):
    """The console script in its own process, whose huggingface_hub reads the environment: the
    cache from HF_HOME alone."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env.update(HF_HOME=str(cache.parent), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "engine.entrypoints.cli.main", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_takes_a_hub_id_from_the_environment_cache(hub_cache, tiny_codegen_dir):
    add_snapshot(hub_cache, "org/tiny", tiny_codegen_dir, COMMIT_A)
    proc = _cli(["generate", "--model", "org/tiny", "--max-tokens", "3", "--dtype", "float32",
                 "def f"], hub_cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def f")
    assert "Loading weights" not in proc.stderr  # no progress bar into a pipe


def test_cli_missing_hub_model_is_one_line(hub_cache, capsys):
    from engine.entrypoints.cli.main import main
    assert main(["generate", "--model", "org/absent", "x"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("codeinfer generate: error: model: 'org/absent' is not a local folder")
    assert "`hf download org/absent`" in line


def test_serve_takes_the_model_positionally_and_fails_in_one_line(hub_cache):
    proc = _cli(["serve", "org/absent", "--port", "0"], hub_cache)
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot load the model: model: 'org/absent'") and "hf download" in line
