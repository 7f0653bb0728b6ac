"""kernels.cpu.team_thread_ids: the OS threads of an OpenMP team, the caller first."""
import threading

import pytest
import torch

from kernels import cpu


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_team_is_the_caller_then_distinct_workers(num_threads):
    ids = cpu.team_thread_ids(num_threads)
    assert len(ids) == num_threads
    assert ids[0] == threading.get_native_id()
    assert len(set(ids)) == num_threads and all(i > 0 for i in ids)


def test_later_teams_reuse_the_same_threads():
    first = cpu.team_thread_ids(2)
    torch.ones(1 << 20).sum()  # torch's parallel ops run on the same pool
    assert cpu.team_thread_ids(2) == first


def test_bad_count_raises():
    with pytest.raises(ValueError, match="num_threads"):
        cpu.team_thread_ids(0)
