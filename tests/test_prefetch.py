"""The low-priority preparation of the next deep batches (blastscan.features.prefetch)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from blastscan.features import prefetch
from blastscan.features.prefetch import Prefetcher


def batches_of(n: int, size: int) -> list[list[int]]:
    return [list(range(lo, min(lo + size, n))) for lo in range(0, n, size)]


def test_results_come_back_in_order_for_every_batch():
    with Prefetcher(lambda i: i * 10, batches_of(23, 5), ahead=2) as pf:
        got = [pf.take(b) for b in range(5)]
    assert got == [[i * 10 for i in b] for b in batches_of(23, 5)]


def test_the_consumer_prepares_what_a_starved_thread_has_not_started():
    gate, who = threading.Event(), {}

    def prepare(i):
        if threading.current_thread().name == "blastscan-prep":
            gate.wait(10)  # the thread is stuck (e.g. starved by other jobs) on the first item it took
        who[i] = threading.current_thread().name
        return i

    threading.Timer(0.5, gate.set).start()
    with Prefetcher(prepare, batches_of(8, 4), ahead=1) as pf:
        assert pf.take(0) == [0, 1, 2, 3]
        assert pf.take(1) == [4, 5, 6, 7]
    by_thread = [i for i in range(4) if who[i] == "blastscan-prep"]
    assert len(by_thread) <= 1, who  # the item in its hands; the consumer did the rest of the batch


def test_the_thread_stays_within_its_batches_ahead():
    """The window is checked on every item the thread prepares, against what the consumer has taken at that
    moment, and the test waits for events, not for time: a thread the scheduler starves only delays it."""
    lock = threading.Lock()
    seen, beyond, taken = [], [], [0]  # items prepared; items outside the window when prepared; batches taken
    reached = {12: threading.Event(), 16: threading.Event()}

    def prepare(i):
        with lock:
            seen.append(i)
            if threading.current_thread().name == "blastscan-prep" and i >= 4 * (taken[0] + 1 + 2):
                beyond.append(i)  # past the batch being taken + 2 ahead
            for n, ev in reached.items():
                if len(seen) >= n:
                    ev.set()
        return i

    # nice 0: the window is what is tested here, not the priority (tested below)
    with Prefetcher(prepare, batches_of(40, 4), ahead=2, nice=0) as pf:
        assert reached[12].wait(60), seen  # the thread fills batches 0, 1, 2 ...
        with lock:
            taken[0] = 1  # batch 3 enters the window during take(0); an overrun before this line is caught
        assert pf.take(0) == [0, 1, 2, 3]
        assert reached[16].wait(60), seen  # ... and one batch more once the consumer took one
        with lock:
            assert sorted(seen) == list(range(len(seen)))  # in order, each once
    assert not beyond, beyond
    n = len(seen)
    assert n <= 16  # the consumer took one batch: at most 4 batches were ever prepared
    pf.close()  # closing again joins the (finished) thread: nothing more is prepared after close
    assert len(seen) == n


def test_an_exception_reaches_the_consumer_with_its_batch():
    def prepare(i):
        if i == 6:
            raise ValueError("bad item 6")
        return i

    with Prefetcher(prepare, batches_of(12, 4)) as pf:
        assert pf.take(0) == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="bad item 6"):
            pf.take(1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_preparation_thread_runs_at_the_lowest_priority_and_the_caller_keeps_its_own():
    tids, by_thread = {}, threading.Event()

    def prepare(i):
        tids[threading.current_thread().name] = threading.get_native_id()
        if threading.current_thread().name == "blastscan-prep":
            by_thread.set()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with Prefetcher(prepare, batches_of(64, 8), ahead=8) as pf:
        assert by_thread.wait(60)  # however long a nice-19 thread waits for a core on a busy machine
        out = [x for b in range(8) for x in pf.take(b)]
    assert pf.lowered and "blastscan-prep" in tids
    assert 19 in out  # items the thread prepared ran at nice 19 ...
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # ... this thread did not change


def test_stopping_early_does_not_wait_for_items_never_started():
    """A consumer that stops at an error leaves batches the thread has not started: close() cancels them
    and waits only for the item in the thread's hands, not its CLOSE_WAIT_SECONDS for futures that can
    never finish."""
    in_hand, release = threading.Event(), threading.Event()

    def prepare(i):
        if i == 0:
            raise ValueError("bad first item")
        if i == 4:  # the thread holds this one while the later batches wait behind it
            in_hand.set()
            release.wait(30)
        return i

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="bad first item"):
        with Prefetcher(prepare, batches_of(40, 4), ahead=5) as pf:
            assert in_hand.wait(30)
            threading.Timer(0.2, release.set).start()
            pf.take(0)
    assert release.is_set() and time.monotonic() - t0 < prefetch.CLOSE_WAIT_SECONDS
