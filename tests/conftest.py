import random

import pytest
import torch

from tests.checkpoints import make_codegen, make_gpt_neo


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _codeinfer_cache(tmp_path_factory, monkeypatch):
    # .bin checkpoints are converted into the codeinfer cache: the tests' own, never ~/.cache.
    monkeypatch.setenv("CODEINFER_CACHE_ROOT", str(tmp_path_factory.getbasetemp() / "codeinfer-cache"))


@pytest.fixture(scope="session")
def tiny_codegen_dir(tmp_path_factory):
    return make_codegen(tmp_path_factory.mktemp("codegen"))


@pytest.fixture(scope="session")
def tiny_gptneo_dir(tmp_path_factory):
    return make_gpt_neo(tmp_path_factory.mktemp("gptneo"))
