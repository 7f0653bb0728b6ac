"""The thread governor: the kernels' thread count follows the cores other work leaves free."""
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine.worker.cpu_threads import OtherLoad, ThreadGovernor, is_running, read_runnable
from kernels.cpu import team_thread_ids


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def governor(readings, max_threads=2, num_cpus=2, **options):
    """A governor fed `readings` (other runnable threads) one per update, a reading due each time."""
    feed, clock = iter(readings), Clock()

    def others():
        clock.now += 1.0
        return next(feed)

    gov = ThreadGovernor(max_threads, num_cpus=num_cpus, others=others, interval_s=0.5, clock=clock,
                         **options)
    return gov, clock


def counts(gov, steps):
    return [gov.update() for _ in range(steps)]


def test_idle_machine_keeps_every_thread():
    gov, _ = governor([0] * 20)
    assert gov.dynamic
    assert counts(gov, 20) == [2] * 20


def test_a_busy_process_takes_a_core_and_giving_it_back_restores_it():
    gov, _ = governor([1] * 10 + [0] * 10)
    busy = counts(gov, 10)
    assert busy[:2] == [2, 2]  # the average needs a few readings to move
    assert busy[-1] == 1 and gov.for_step(1) == 1 and torch.get_num_threads() == 1
    assert counts(gov, 10)[-1] == 2 and gov.for_step(1) == 2 and torch.get_num_threads() == 2


def test_steps_of_many_rows_keep_every_thread_under_load():
    gov, _ = governor([3] * 10, max_threads=3, num_cpus=4)
    assert counts(gov, 10)[-1] == 1
    assert gov.for_step(1) == 1 and torch.get_num_threads() == 1
    assert gov.for_step(ThreadGovernor.GEMM_BOUND_ROWS - 1) == 1
    assert gov.for_step(ThreadGovernor.GEMM_BOUND_ROWS) == 3 and torch.get_num_threads() == 3
    assert gov.for_step(2) == 1 and torch.get_num_threads() == 1


def test_a_short_burst_of_other_work_changes_nothing():
    gov, _ = governor([0, 0, 1, 0, 0, 0, 2, 0, 0, 0])
    assert counts(gov, 10) == [2] * 10


def test_more_busy_processes_than_cores_leave_one_thread():
    gov, _ = governor([3] * 10)
    assert counts(gov, 10)[-1] == 1


@pytest.mark.parametrize("others, expected", [(0, 4), (2, 4), (5, 3), (7, 1), (30, 1)])
def test_count_is_free_cores_within_one_and_max_threads(others, expected):
    gov, _ = governor([others] * 40, max_threads=4, num_cpus=8)
    assert counts(gov, 40)[-1] == expected


def test_readings_wait_for_the_interval():
    calls = []
    clock = Clock()
    gov = ThreadGovernor(2, num_cpus=2, others=lambda: calls.append(clock.now) or 0, interval_s=0.5,
                         clock=clock)
    for t in (0.0, 0.1, 0.4, 0.6, 0.7, 1.2):
        clock.now = t
        gov.update()
    assert calls == [0.0, 0.6, 1.2]


def test_fixed_count_reads_nothing():
    def fail():
        raise AssertionError("read the load")

    for gov in (ThreadGovernor(2, dynamic=False, others=fail), ThreadGovernor(1, others=fail)):
        assert not gov.dynamic
        assert counts(gov, 3) == [gov.max_threads] * 3


def test_unknown_load_keeps_the_count():
    gov, _ = governor([None] * 5)
    assert counts(gov, 5) == [2] * 5
    with pytest.raises(ValueError, match="max_threads"):
        ThreadGovernor(0)


def test_read_runnable_parses_loadavg(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("0.52 0.58 0.59 3/1024 12345\n")
    bad.write_text("garbage\n")
    assert read_runnable(str(good)) == 3
    assert read_runnable(str(bad)) is None
    assert read_runnable(str(tmp_path / "missing")) is None
    if read_runnable() is None:
        pytest.skip("no /proc/loadavg here")
    assert read_runnable() >= 1  # the caller itself is running


def test_is_running_tells_a_running_thread_from_a_sleeping_one():
    if read_runnable() is None:
        pytest.skip("no /proc here")
    assert is_running(threading.get_native_id())
    wake = threading.Event()
    sleeper = threading.Thread(target=wake.wait)
    sleeper.start()
    try:
        assert _stops_running(sleeper.native_id)  # asleep in its wait
    finally:
        wake.set()
        sleeper.join()
    assert _stops_running(sleeper.native_id)  # gone


def _stops_running(tid: int, timeout_s: float = 5.0) -> bool:
    """Whether thread tid is seen not running within timeout_s: on a loaded machine a new thread
    may take a while to reach its wait, and a joined one to finish exiting in the kernel."""
    deadline = time.monotonic() + timeout_s
    while is_running(tid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not is_running(tid)


def test_other_load_counts_busy_processes_and_not_the_engine():
    if read_runnable() is None:
        pytest.skip("no /proc here")
    load = OtherLoad(2)
    workers = load.workers()
    assert len(workers) == 1 and threading.get_native_id() not in workers
    seen = []
    stepper = threading.Thread(target=lambda: seen.append((load.workers(), team_thread_ids(2)[1:])))
    stepper.start()
    stepper.join()
    assert seen[0][0] == seen[0][1]  # another stepping thread: its own team's workers
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        readings = []
        for _ in range(20):
            readings.append(load())
            time.sleep(0.01)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    # Both are always runnable; the scheduler may have one of them off the run queue at a reading.
    assert sorted(readings)[len(readings) // 2] >= 1, readings

