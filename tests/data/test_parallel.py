"""`ordered_map` with --num-proc N (data/parallel.py): N processes do the work, this one included
(it weighs a batch itself when the N-1 workers hold all they may), results come in input order,
and an error is the first one in input order, whatever process met it and whenever."""

import os
import textwrap
import time

import pytest

from alpaca_plw.data.parallel import ordered_map

JOB = '''
import os
import time


def setup(delay):
    return float(delay)


def work(delay, item):
    kind, value = item
    time.sleep(delay if kind != "slow" else 1.5)
    if kind in ("fail", "slow"):
        raise ValueError(f"batch {value} failed in {'a worker' if os.getpid() != PARENT else 'the parent'}")
    return value * value, os.getpid()


def which(state, item):
    time.sleep(0.15)
    return state, os.getpid()


PARENT = None
'''


@pytest.fixture
def job(tmp_path, monkeypatch):
    (tmp_path / "plw_parallel_job.py").write_text(textwrap.dedent(JOB))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawn gives the workers this sys.path
    import plw_parallel_job

    plw_parallel_job.PARENT = os.getpid()
    yield plw_parallel_job
    monkeypatch.delitem(__import__("sys").modules, "plw_parallel_job")


@pytest.mark.parametrize("num_proc", [1, 2, 3])
def test_results_in_input_order_and_this_process_does_its_share(job, num_proc):
    items = [("ok", i) for i in range(11)]
    out = list(ordered_map(job.work, items, num_proc, job.setup, (0.15,)))
    assert [v for v, _ in out] == [i * i for i in range(11)]
    pids = {pid for _, pid in out}
    if num_proc == 1:
        assert pids == {os.getpid()}
    else:
        # the workers cannot have finished 2 x (N - 1) batches by the time the third arrives
        assert os.getpid() in pids and len(pids) == num_proc


def test_first_error_in_input_order_wins_and_reading_stops(job):
    """Batch 0 fails late in a worker; batch 2, done here, fails at once: batch 0's error is the
    one raised (as one process would), and no batch after 2 is read."""
    read = []

    def items():
        for i, kind in enumerate(["slow", "ok", "fail", "ok", "ok", "ok"]):
            read.append(i)
            yield kind, i

    start = time.monotonic()
    with pytest.raises(ValueError, match="batch 0 failed in a worker"):
        list(ordered_map(job.work, items(), 2, job.setup, (0.05,)))
    assert max(read) == 2
    assert time.monotonic() - start < 60


def test_in_flight_batches_stay_bounded(job):
    """However fast the reader, at most 2 x N batches are read ahead of the one yielded."""
    read, seen = [], []

    def items():
        for i in range(30):
            read.append(i)
            yield "ok", i

    for value, _ in ordered_map(job.work, items(), 2, job.setup, (0.02,)):
        seen.append(value)
        assert len(read) - len(seen) <= 2 * 2
    assert seen == [i * i for i in range(30)]


def test_this_process_helps_with_the_helper_state_it_is_given(job):
    """`weights` hands its own tokenizer, made single-threaded, as the helper state: no second
    tokenizer is loaded here, and N processes still use N cores."""
    out = list(ordered_map(job.which, range(8), 2, job.setup, (0.0,), helper_state="helper"))
    assert {state for state, pid in out if pid == os.getpid()} == {"helper"}
    assert {state for state, pid in out if pid != os.getpid()} == {0.0}
