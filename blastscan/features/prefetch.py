"""Preparing the next batches of a deep backbone while the current one runs, without slowing it down.

On a machine whose cores the forward pass already fills, a preparation thread at normal priority
competes with the forward's own threads: each time it preempts one, the others wait for it at the
next barrier, so the forward loses more than the preparation costs (``extract`` ran at 81% of the bare
forward with two such threads). Here the preparation thread runs at the lowest priority
(nice 19): it gets the cycles the forward leaves idle, and it cannot delay the forward. What it has not
started when the forward wants the batch, the consumer prepares itself, at normal priority, so a
starved thread (a machine busy with other jobs) costs no more than preparing in line.

:class:`Prefetcher` works on items (one image each) grouped in batches; ``prepare(i)`` must return its
result or raise (an exception reaches the consumer with the batch of its item). The thread is a
one-thread executor (:func:`blastscan.parallel.thread_pool`) fed one future per item, a few batches
ahead; the consumer takes over an item by cancelling its future before the thread starts it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, wait
from typing import Any, Callable, Sequence

from blastscan.parallel import thread_pool

__all__ = ["Prefetcher", "LOW_PRIORITY", "THREAD_NAME"]

LOW_PRIORITY = 19  # nice value of the preparation thread (Linux: per thread); 0 keeps the normal priority
THREAD_NAME = "blastscan-prep"
CLOSE_WAIT_SECONDS = 5.0  # close() waits this long for the item in the thread's hands


def _lower_this_thread(nice: int) -> bool:
    """Give the calling thread the nice value ``nice`` (Linux applies it to the thread alone)."""
    if not nice or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except OSError:
        return False


class Prefetcher:
    """Prepare the items of ``batches`` in order, up to ``ahead`` batches ahead of the consumer.

    Parameters
    ----------
    prepare : callable
        ``prepare(item) -> result`` for one item (an index into the caller's list).
    batches : sequence of sequences of int
        The items of each batch, in the order the consumer takes them.
    ahead : int
        Batches prepared ahead of the one the consumer is taking.
    nice : int
        Nice value of the preparation thread (:data:`LOW_PRIORITY`).

    Examples
    --------
    >>> with Prefetcher(lambda i: i * i, [[0, 1], [2, 3]]) as pf:
    ...     [pf.take(0), pf.take(1)]
    [[0, 1], [4, 9]]
    """

    def __init__(self, prepare: Callable[[int], Any], batches: Sequence[Sequence[int]], ahead: int = 2,
                 nice: int = LOW_PRIORITY):
        self._prepare = prepare
        self._batches = [list(b) for b in batches]
        self._nice = nice
        self._futures: dict[int, Future] = {}
        self._submitted = 0  # batches handed to the thread so far
        self.lowered = False  # whether the thread got its low priority (for tests and benchmarks)
        self._pool = thread_pool(1, THREAD_NAME, self._start_thread)
        for _ in range(min(len(self._batches), 1 + max(0, int(ahead)))):
            self._submit_next()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop preparing (the item in hand is finished and dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        # a future the shutdown cancelled never counts as done for wait(): wait for the one in hand only
        wait([f for f in self._futures.values() if not f.cancelled()], timeout=CLOSE_WAIT_SECONDS)
        self._futures.clear()

    def _start_thread(self) -> None:
        threading.current_thread().name = THREAD_NAME
        self.lowered = _lower_this_thread(self._nice)

    def _submit_next(self) -> None:
        """Hand the thread the next batch's items (one future each)."""
        if self._submitted < len(self._batches):
            for item in self._batches[self._submitted]:
                self._futures[item] = self._pool.submit(self._prepare, item)
            self._submitted += 1

    def take(self, b: int) -> list[Any]:
        """The results of batch ``b``'s items, in order; prepares here what the thread has not started.

        Raises the first exception a ``prepare`` of this batch raised.
        """
        while self._submitted <= b:  # a batch taken out of order: it was never handed to the thread
            self._submit_next()
        outs: dict[int, tuple[bool, Any]] = {}
        for item in self._batches[b]:
            if self._futures[item].cancel():  # not started: prepared here, at the consumer's priority
                try:
                    outs[item] = (True, self._prepare(item))
                except BaseException as exc:  # raised below, with the batch, as the thread's would be
                    outs[item] = (False, exc)
        for item in self._batches[b]:
            fut = self._futures.pop(item)
            if item not in outs:
                exc = fut.exception()
                outs[item] = (False, exc) if exc is not None else (True, fut.result())
        self._submit_next()  # the window moves on by the batch just taken
        for ok, value in (outs[item] for item in self._batches[b]):
            if not ok:
                raise value
        return [outs[item][1] for item in self._batches[b]]
