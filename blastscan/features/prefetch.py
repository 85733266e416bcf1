"""Preparing the next batches of a deep backbone while the current one runs, without slowing it down.

On a machine whose cores the forward pass already fills, a preparation thread at normal priority
competes with the forward's own threads: each time it preempts one, the others wait for it at the
next barrier, so the forward loses more than the preparation costs (``extract`` ran at 81% of the bare
forward with two such threads). Here the preparation thread runs at the lowest priority
(nice 19): it gets the cycles the forward leaves idle, and it cannot delay the forward. What it has not
started when the forward wants the batch, the consumer prepares itself, at normal priority, so a
starved thread (a machine busy with other jobs) costs no more than preparing in line.

:class:`Prefetcher` works on items (one image each) grouped in batches; ``prepare(i)`` must return its
result or raise (an exception reaches the consumer with the batch of its item).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

__all__ = ["Prefetcher", "LOW_PRIORITY"]

LOW_PRIORITY = 19  # nice value of the preparation thread (Linux: per thread); 0 keeps the normal priority


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
        self._ahead = max(0, int(ahead))
        self._nice = nice
        self._cv = threading.Condition()
        self._claimed: set[int] = set()
        self._done: dict[int, tuple[bool, Any]] = {}
        self._current = 0  # the batch the consumer takes next
        self._stop = False
        self.lowered = False  # whether the thread got its low priority (for tests and benchmarks)
        self._thread = threading.Thread(target=self._work, name="blastscan-prep", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop preparing (the item in hand is finished and dropped)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    # -- both threads -------------------------------------------------------------------------------
    def _claim(self, b: int) -> int | None:
        """An item of batch ``b`` nobody has started, now claimed (call with the lock held)."""
        for item in self._batches[b]:
            if item not in self._claimed:
                self._claimed.add(item)
                return item
        return None

    def _run(self, item: int) -> None:
        try:
            out = (True, self._prepare(item))
        except BaseException as exc:  # handed to the consumer with its batch
            out = (False, exc)
        with self._cv:
            self._done[item] = out
            self._cv.notify_all()

    # -- the preparation thread ---------------------------------------------------------------------
    def _work(self) -> None:
        self.lowered = _lower_this_thread(self._nice)
        while True:
            with self._cv:
                item = None
                while not self._stop:
                    last = min(len(self._batches), self._current + 1 + self._ahead)
                    item = next((i for b in range(self._current, last) if (i := self._claim(b)) is not None), None)
                    if item is not None or self._current >= len(self._batches):
                        break
                    self._cv.wait()
                if self._stop or item is None:
                    return
            self._run(item)

    # -- the consumer -------------------------------------------------------------------------------
    def take(self, b: int) -> list[Any]:
        """The results of batch ``b``'s items, in order; prepares here what the thread has not started.

        Raises the first exception a ``prepare`` of this batch raised.
        """
        with self._cv:
            self._current = b
            self._cv.notify_all()
        while True:
            with self._cv:
                item = self._claim(b)
            if item is None:
                break
            self._run(item)
        with self._cv:
            while not all(i in self._done for i in self._batches[b]):
                self._cv.wait()
            outs = [self._done.pop(i) for i in self._batches[b]]
            self._current = b + 1
            self._cv.notify_all()
        for ok, value in outs:
            if not ok:
                raise value
        return [value for _, value in outs]
