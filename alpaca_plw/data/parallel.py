"""Every core: a function mapped over batches in worker processes, the results in input order.

`ordered_map(func, items, num_proc, setup, args)` calls `func(state, item)` for every item, where
`state = setup(*args)` is built once per process (a tokenizer, a chat template). With
`num_proc > 1` and at least two items, `num_proc` processes do the work: `num_proc - 1` worker
processes (started with "spawn": the parent may hold threads, which "fork" copies badly) each take
one batch at a time, and this process, which reads the batches, weighs one itself whenever the
workers hold `2 x (num_proc - 1)` batches already (so it never waits idle while there is work, and
no worker's start-up is spent where this process can do the batch). At most `2 x num_proc`
batches are in flight, so memory stays bounded however many batches come, and the results are
yielded in the order of `items` whatever the order they finish in; an error of a batch is raised
when its turn comes, so it is the first error in input order. The output of every command, and
its first error, are therefore the same for every `num_proc`.

Results come back through a pipe widened to 1 MiB (`_widen_results`), so that a worker hands a
result over without waiting for this process, busy with a batch of its own, to read it.

SentencePiece has its own threads (`num_threads`): a worker, and this process's own state while
it helps the workers, use one (`WORKER_THREADS`) so that N processes use N cores, not N x cores;
with one process the tokenizer keeps its threads.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, islice

from alpaca_plw.errors import ConfigError

WORKER_THREADS = 1
_RESULT_PIPE = 1 << 20  # bytes; see `_widen_results`
_STATE: dict[str, object] = {}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), the default `--num-proc`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_num_proc(num_proc: int | None) -> int:
    """`num_proc`, or the available cores for None; at least 1."""
    if num_proc is None:
        return available_cores()
    if num_proc < 1:
        raise ConfigError(f"--num-proc must be at least 1, got {num_proc}")
    return int(num_proc)


@contextmanager
def _sigint_held():
    """SIGINT blocked in this thread while `submit` may start a worker: the mask is inherited
    through fork and exec, so a Ctrl-C during a worker's start-up (spawn imports the main module
    again before any initializer runs) is not the worker's; here it waits and is raised after."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _init(setup: Callable, args: tuple) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down; a
    # worker waiting for its next batch would print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STATE["state"] = setup(*args)


def _call(func: Callable, item):
    return func(_STATE["state"], item)


def ordered_map(func: Callable, items: Iterable, num_proc: int, setup: Callable, args: tuple,
                local_state=None, helper_state=None) -> Iterator:
    """`func(state, item)` for each item, in order (see the module docstring). `local_state`,
    when given, is the state used in this process (one process, or a single item);
    `helper_state`, the state this process uses while it helps workers (what `setup(*args)`
    builds, made from what it holds already: e.g. its tokenizer with one thread)."""
    items = iter(items)
    if num_proc > 1:
        head = list(islice(items, 2))
        items = chain(head, items)
        if len(head) == 2:
            yield from _pool(func, items, num_proc, setup, args, helper_state)
            return
    state = local_state if local_state is not None else setup(*args)
    for item in items:
        yield func(state, item)


class _Done:
    """A batch this process did itself: its result, or the error to raise when its turn comes."""

    __slots__ = ("value", "error")

    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error = value, error

    def done(self) -> bool:
        return True

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def _widen_results(pool) -> None:
    """Give the pipe that carries the workers' results the largest buffer Linux allows an
    unprivileged process (`/proc/sys/fs/pipe-max-size`, 1 MiB by default; 64 KiB otherwise).

    Why: a worker's `put` of a result larger than the buffer blocks until this process has read
    it, and this process reads in a helper thread that needs the GIL once per buffer-full; while
    this process weighs a batch itself (Python code holding the GIL for 5 ms at a time) a 4 MiB
    result kept its worker waiting for most of that batch. With a result that fits the buffer the
    worker goes on at once. Best effort: where the queue's pipe is not reachable (another Python's
    executor) or Linux refuses, the default buffer stays and only speed differs."""
    import fcntl

    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    reader = getattr(getattr(pool, "_result_queue", None), "_reader", None)
    if set_size is None or reader is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
            size = int(f.read())
        fcntl.fcntl(reader.fileno(), set_size, min(size, _RESULT_PIPE))
    except (OSError, ValueError):
        pass


def _pool(func, items, num_proc: int, setup, args, state=None) -> Iterator:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = num_proc - 1
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                               initargs=(setup, args))
    _widen_results(pool)
    window = 2 * workers  # batches in the workers' hands, queued or running
    pending: deque = deque()  # futures and this process's own `_Done`s, in input order
    try:
        for item in items:
            busy = sum(1 for p in pending if not p.done())
            if busy < window:
                with _sigint_held():  # a worker started here starts with SIGINT blocked
                    pending.append(pool.submit(_call, func, item))
            else:  # the workers are full: do this batch here rather than wait
                if state is None:
                    state = setup(*args)
                try:
                    pending.append(_Done(func(state, item)))
                except Exception as exc:  # noqa: BLE001 - raised in input order, below
                    pending.append(_Done(error=exc))
                    break  # read no further: the earlier batches' results come first, then it
            while pending and (pending[0].done() or len(pending) >= 2 * num_proc):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            if not isinstance(future, _Done):
                future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
