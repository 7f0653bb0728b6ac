"""Replica options, the affinity key, and Ray staying optional (no Ray instance needed)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from engine.core.block_manager import block_hash
from engine.entrypoints.replicas.affinity import prefix_key, rank_by_affinity
from engine.entrypoints.replicas.options import ReplicaOptions
from tests.entrypoints.server.conftest import REPO, RUNNER

# Runs `codeinfer serve` in a Python where `import ray` fails, as it does without the extra.
NO_RAY = "import sys; sys.modules['ray'] = None; " + RUNNER.removeprefix("import sys; ")


def test_replicas_without_ray_fail_at_once_naming_the_extra():
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", NO_RAY, "serve", "--num-replicas", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert 'pip install -e ".[ray]"' in done.stderr
    assert "Loaded" not in done.stderr          # refused before loading any model
    assert time.monotonic() - start < 60


def test_engine_and_single_process_server_never_import_ray():
    code = ("import sys, argparse; import engine; from engine import LLM, SamplingParams; "
            "import engine.entrypoints.server, engine.entrypoints.async_engine; "
            "from engine.entrypoints.cli import main, serve; "
            "main.build_parser().parse_args(['serve', '--num-replicas', '1']); "
            "assert 'ray' not in sys.modules, [m for m in sys.modules if m.startswith('ray')]")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kwargs, name", [
    ({"num_replicas": 0}, "num_replicas"), ({"threads_per_replica": 0}, "threads_per_replica"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
    ({"min_replicas": -1}, "min_replicas"),
    ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
    ({"ray_address": " "}, "ray_address"), ({"affinity_blocks": 0}, "affinity_blocks"),
    ({"router": "round-robin"}, "router"),
])
def test_invalid_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ReplicaOptions(**kwargs)


def test_when_ray_is_used_and_what_replicas_reserve():
    assert not ReplicaOptions().uses_ray
    assert ReplicaOptions(num_replicas=2).uses_ray
    assert ReplicaOptions(ray_address="10.0.0.1:6379").uses_ray
    autoscaled = ReplicaOptions(min_replicas=1, max_replicas=4)
    assert autoscaled.uses_ray and autoscaled.replica_range == (1, 4)
    assert ReplicaOptions(num_replicas=5, max_replicas=4).initial_replicas == 4
    assert ReplicaOptions(min_replicas=2, max_replicas=4).initial_replicas == 2
    assert ReplicaOptions(threads_per_replica=2).cpus_per_replica(None) == 2
    assert ReplicaOptions().cpus_per_replica(3) == 3 and ReplicaOptions().cpus_per_replica(None) == 1
    assert ReplicaOptions(num_replicas=64).local_num_cpus(2) == 128


def test_prefix_key_is_the_block_managers_hash_of_the_first_full_blocks():
    ids = list(range(1, 70))               # 4 full blocks of 16, and 5 tokens
    first_two = block_hash(block_hash(b"", ids[:16], [0] * 16), ids[16:32], [0] * 16)
    assert prefix_key(ids, None, 16, 2) == first_two
    assert prefix_key(ids + [9, 9], None, 16, 2) == first_two     # a longer tail: same replica
    assert prefix_key(ids, [1] * len(ids), 16, 2) != first_two   # code modality: other blocks
    assert prefix_key(ids[:16], None, 16, 2) is None   # the last block is never served from cache
    assert prefix_key(ids[:17], None, 16, 4) == block_hash(b"", ids[:16], [0] * 16)


def test_rendezvous_ranking_moves_only_the_keys_of_a_replica_that_leaves():
    replicas = [f"r{i}" for i in range(5)]
    keys = [prefix_key(list(range(i, i + 20)), None, 16, 1) for i in range(200)]
    owners = {key: rank_by_affinity(key, replicas)[0] for key in keys}
    assert len(set(owners.values())) == 5                          # every replica gets keys
    remaining = [r for r in replicas if r != "r2"]
    for key, owner in owners.items():
        new_owner = rank_by_affinity(key, remaining)[0]
        assert new_owner == owner or owner == "r2"


def test_deployment_options_reserve_cpus_and_pick_the_router():
    from engine.engine_args import EngineArgs
    from engine.entrypoints.replicas.deployment import engine_deployment_options
    from engine.entrypoints.replicas.router import PrefixAffinityRouter

    args = EngineArgs(block_size=32, max_num_seqs=8)
    fixed = engine_deployment_options(args, ReplicaOptions(num_replicas=3, threads_per_replica=2),
                                      max_queue=4)
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 2}
    assert fixed["max_ongoing_requests"] == 12
    router = fixed["request_router_config"]
    assert router.request_router_class == (f"{PrefixAffinityRouter.__module__}."
                                           f"{PrefixAffinityRouter.__qualname__}")
    assert router.request_router_kwargs["block_size"] == 32
    scaled = engine_deployment_options(
        args, ReplicaOptions(min_replicas=1, max_replicas=4, router="default"), max_queue=4)
    assert scaled["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in scaled
    assert "request_router_config" not in scaled
