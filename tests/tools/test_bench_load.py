"""Background load (engine/tools/bench_load.py): the busy processes run during the timed part and are
always stopped after it, also when the timed function raises or is interrupted, and die with the
thread that started them."""
import threading
import time

import psutil
import pytest

from engine.tools import bench_load
from engine.tools.bench_peers import time_runs

PROMPTS = {"warm": [[1]], "prefill": [[1]], "full": [[1]]}


def _busy_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "while True" in " ".join(p.cmdline())]


def test_load_runs_during_the_timed_part_and_stops_after():
    seen = []

    def run(batch, num_tokens):
        seen.append(len(_busy_children()))

    before = len(_busy_children())
    result = time_runs(run, PROMPTS, 3, background_load=2)
    assert seen == [before + 2] * 3  # warm-up, prefill-only and full run all see both
    assert len(_busy_children()) == before
    assert result["full_s"] >= 0 and result["prefill_s"] >= 0


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_load_is_stopped_when_the_timed_function_raises(error):
    procs = []

    def run(batch, num_tokens):
        procs.extend(_busy_children())
        raise error

    with pytest.raises(type(error)):
        time_runs(run, PROMPTS, 3, background_load=2)
    assert len(procs) == 2
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)
    assert not _busy_children()


def test_no_load_starts_nothing():
    with bench_load.background_load(0) as procs:
        assert procs == [] and not _busy_children()
    with pytest.raises(ValueError, match="background_load"):
        bench_load.start(-1)


def test_load_dies_with_the_thread_that_started_it():
    # PR_SET_PDEATHSIG: even a benchmark killed outright leaves nothing spinning. A thread's exit
    # triggers the same signal, which makes it testable in-process. The thread waits until the
    # loop spins (so its request to the kernel is in) before it exits.
    procs = []

    def starter():
        procs.extend(bench_load.start(1))
        deadline = time.monotonic() + 20
        while psutil.Process(procs[0].pid).cpu_times().user < 0.1 and time.monotonic() < deadline:
            time.sleep(0.02)

    thread = threading.Thread(target=starter)
    thread.start()
    thread.join()
    try:
        assert procs[0].wait(timeout=10) == -9
    finally:
        bench_load.stop(procs)
