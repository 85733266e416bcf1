"""Where independent tasks run: the one module that knows about executors.

Per-image feature chunks, deep-feature batches and the model fits of a comparison are tasks. Locally they
run in a loky process pool (``--jobs``); inside :func:`session` with a scheduler (``--scheduler ADDRESS``,
``local[:N]``, ``$BLASTSCAN_SCHEDULER`` or Dask's ``$DASK_SCHEDULER_ADDRESS``) they run on a Dask
distributed cluster. Either way results come back to the caller, which alone writes the feature store, so
workers need no shared folder. Threads within one process (reading images, preparing a network's next
batches) come from :func:`thread_pool` and :func:`map_threads`.

Dask (``dask``, ``distributed``) is optional and slow to import: it is imported inside the functions that
need it, only when a scheduler is asked for.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from joblib import Parallel, delayed, parallel_config

import blastscan
from blastscan._io import remove_stale_temp
from blastscan.errors import BlastscanError

__all__ = ["ENV_VARS", "RETRIES", "LocalExecutor", "DaskExecutor", "resolve_scheduler", "session", "executor",
           "active", "exit_with_parent", "PARENT_POLL_SECONDS", "thread_pool", "map_threads"]

#: Read in this order when no ``--scheduler`` is given (the second is Dask's own convention).
ENV_VARS = ("BLASTSCAN_SCHEDULER", "DASK_SCHEDULER_ADDRESS")
#: A task that raises is run again this often; a task whose worker dies is rescheduled by Dask itself
#: (up to ``distributed.scheduler.allowed-failures`` times), so a dead worker loses only its running task.
RETRIES = 2
#: Arrays at least this large are sent to the cluster once per map and shared by its tasks.
SHARE_BYTES = 1 << 20
SCRATCH_PREFIX = "blastscan-dask-"
INSTALL_HINT = 'Dask is not installed; install it with: pip install "blastscan[dask]"'
_OFF = ("", "none", "off", "no")
#: Unset for the workers of a ``local:N`` cluster (see :func:`_connect`); set it to null in the Dask config
#: of your own worker machines for the same rate.
MALLOC_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


#: How often a local worker process checks that its parent still runs (it exits when not).
PARENT_POLL_SECONDS = 1.0


def exit_with_parent(parent_pid: int | None) -> None:
    """In a worker process: exit as soon as ``parent_pid`` is gone. A kill -9 of the parent runs no
    clean-up, and loky's idle workers (and through them its resource tracker, which waits for every
    holder of its pipe) would otherwise linger for minutes."""
    if parent_pid is None or parent_pid == os.getpid():
        return
    _watch_parent(parent_pid)


# The worker process's own state, kept between its tasks (a loky worker serves many): one watcher per parent.
@functools.cache
def _watch_parent(parent_pid: int) -> None:
    def watch():
        while True:
            if os.getppid() != parent_pid:  # re-parented: the parent died
                os._exit(1)
            time.sleep(PARENT_POLL_SECONDS)

    threading.Thread(target=watch, name="blastscan-parent-watch", daemon=True).start()


def _watched(parent_pid: int, fn: Callable, *args):
    """Run ``fn(*args)`` in a local worker that exits with its parent."""
    exit_with_parent(parent_pid)
    return fn(*args)


# -- threads within this process ---------------------------------------------------------------------
def thread_pool(threads: int, name: str, initializer: Callable[[], None] | None = None) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads named ``name`` (each runs ``initializer`` first), for work that
    releases the GIL or overlaps a caller's own (decoding images, preparing a network's next batches)."""
    return ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix=name, initializer=initializer)


def map_threads(fn: Callable, items: Iterable, threads: int, *, ahead: int = 4) -> Iterator[Any]:
    """``fn(item)`` for each item on ``threads`` threads, yielded in the items' order, with at most
    ``ahead * threads`` started and not yet yielded (memory stays flat on long lists). The first
    exception is raised here; items not started when the caller stops are never run."""
    threads = max(1, int(threads))
    pool = thread_pool(threads, "blastscan-map")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class LocalExecutor:
    """Tasks in this process (``jobs <= 1``) or in a loky pool of ``jobs`` processes."""

    remote = False

    def __init__(self, jobs: int):
        self.jobs = max(1, int(jobs))

    @property
    def workers(self) -> int:
        return self.jobs

    def is_parallel(self, n_tasks: int) -> bool:
        """Whether ``n_tasks`` tasks would leave this process (then each should use one thread)."""
        return self.jobs > 1 and n_tasks > 1

    def map_unordered(self, fn: Callable, arglists: Iterable[tuple], *, one_thread: bool = False) -> Iterator[Any]:
        """``fn(*args)`` for each tuple of ``arglists``, yielded as they finish.

        ``one_thread`` limits OpenMP/BLAS to one thread per worker process (model fits)."""
        arglists = list(arglists)
        if not self.is_parallel(len(arglists)):
            for args in arglists:
                yield fn(*args)
            return
        with parallel_config(backend="loky", inner_max_num_threads=1 if one_thread else None):
            par = Parallel(n_jobs=self.jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
            parent = os.getpid()  # every worker watches this process and exits when it dies
            yield from par(delayed(_watched)(parent, fn, *args) for args in arglists)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a Dask distributed cluster (a client of ``address``, or a ``LocalCluster`` it started)."""

    remote = True

    def __init__(self, client, cluster=None, address: str = "", scratch: str | None = None):
        self.client, self.cluster, self.address = client, cluster, address
        self.scratch = scratch  # a local cluster's scratch folder, removed on close

    @property
    def workers(self) -> int:
        """Worker threads of the cluster now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def is_parallel(self, n_tasks: int) -> bool:
        return True  # every task goes to the cluster: the client may lack cores, weights or models

    def map_unordered(self, fn: Callable, arglists: Iterable[tuple], *, one_thread: bool = False) -> Iterator[Any]:
        """As :meth:`LocalExecutor.map_unordered`. Large arrays shared by the tasks travel once; a task that
        raises is retried ``RETRIES`` times; tasks not yet finished are cancelled when the caller stops."""
        from distributed import as_completed

        shared: dict[int, tuple[Any, Any]] = {}
        futures = [self.client.submit(fn, *self._share(args, shared), pure=False, retries=RETRIES)
                   for args in arglists]
        pending = set(futures)
        try:
            for fut in as_completed(futures):
                pending.discard(fut)
                yield fut.result()
                fut.release()
        finally:
            if pending:
                self.client.cancel(list(pending))
            del futures
            shared.clear()

    def _share(self, args: tuple, shared: dict) -> tuple:
        out = []
        for a in args:
            if isinstance(a, np.ndarray) and a.nbytes >= SHARE_BYTES:
                if id(a) not in shared:  # the array is kept in `shared`, so its id stays unique
                    shared[id(a)] = (a, self.client.scatter(a, hash=False))
                a = shared[id(a)][1]
            out.append(a)
        return tuple(out)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.scratch:  # Dask would leave an empty dask-scratch-space behind
            shutil.rmtree(self.scratch, ignore_errors=True)
            try:  # the one Dask makes in the temp folder itself: only when empty (another run may use it)
                os.rmdir(os.path.join(tempfile.gettempdir(), "dask-scratch-space"))
            except OSError:
                pass


# -- choosing and holding an executor ------------------------------------------------------------------
def resolve_scheduler(value: str | None) -> str | None:
    """The scheduler to use: ``value``, else ``$BLASTSCAN_SCHEDULER``, else ``$DASK_SCHEDULER_ADDRESS``;
    ``None`` for local processes (also for ``"none"``/``"off"``/``""``)."""
    if value is None:
        value = next((os.environ[v] for v in ENV_VARS if os.environ.get(v) is not None), None)
    if value is None or value.strip().lower() in _OFF:
        return None
    return value.strip()


def _local_workers(address: str) -> int | None:
    """``N`` of ``local:N`` (``local`` alone: the CPU count); ``None`` when ``address`` is not ``local``."""
    head, sep, n = address.partition(":")
    if head.lower() != "local" or (sep and n.startswith("//")):
        return None
    if not sep:
        return max(1, os.cpu_count() or 1)
    try:
        workers = int(n)
    except ValueError:
        workers = 0
    if workers < 1:
        raise BlastscanError(f"--scheduler {address}", "expected local or local:N with N >= 1 workers")
    return workers


def _connect(address: str) -> DaskExecutor:
    n_local = _local_workers(address)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BlastscanError(f"--scheduler {address}", INSTALL_HINT) from None
    if n_local is not None:
        # Single-threaded worker processes, as the local pool: models and feature code are not all
        # thread-safe, and BLAS/OpenMP are limited to one thread per worker by Dask's nanny.
        # the workers' scratch space in a folder of our own (named by pid: a killed run's is removed by the next)
        remove_stale_temp(tempfile.gettempdir(), SCRATCH_PREFIX)
        scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        try:
            import dask

            # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap threshold:
            # every large temporary array is then mapped and unmapped afresh. Measured interleaved on 96 cells,
            # handcrafted extraction took 1.6-1.7x the worker CPU time with it (the "half the local rate").
            with dask.config.set({"temporary-directory": scratch, MALLOC_TRIM_KEY: None}):
                cluster = LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR, local_directory=scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return DaskExecutor(Client(cluster), cluster, address, scratch)
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise BlastscanError(f"--scheduler {address}", f"cannot connect to a Dask scheduler ({exc})") from None
    ex = DaskExecutor(client, None, address)
    try:
        _check_workers(client, address)
    except BaseException:
        ex.close()
        raise
    return ex


def _worker_version() -> str | None:
    """Run on a worker: its blastscan version (None without one: the import is the question asked)."""
    try:
        import blastscan as on_worker
    except ImportError:
        return None
    return on_worker.__version__


def _check_workers(client, address: str, timeout: float = 60.0) -> None:
    """Wait for a worker, and refuse workers whose blastscan differs: their features would not be ours."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise BlastscanError(f"--scheduler {address}", f"no worker joined within {timeout:.0f} s "
                                                       "(start some with: dask worker ADDRESS)") from None
    versions = client.run(_worker_version)
    bad = {w: v for w, v in versions.items() if v != blastscan.__version__}
    if bad:
        worker, version = next(iter(bad.items()))
        found = f"blastscan {version}" if version else "no blastscan"
        raise BlastscanError(f"--scheduler {address}", f"worker {worker} has {found}, this client "
                                                       f"{blastscan.__version__}; install the same on every worker")


# The open sessions of this process, innermost last: process-wide, as Dask's own default client, because
# the pipelines several calls below a command ask executor() where to run; each lives as its `with` block.
_ACTIVE: list[DaskExecutor] = []


@contextmanager
def session(scheduler: str | None = None) -> Iterator[DaskExecutor | None]:
    """Within this block, :func:`executor` hands out a Dask executor when a scheduler is given (or named by
    the environment, see :func:`resolve_scheduler`); a ``local[:N]`` cluster is started and stopped
    with the block. Without a scheduler nothing changes (and Dask is not imported). Nested sessions
    reuse the outer one.

    Examples
    --------
    >>> from blastscan import parallel
    >>> with parallel.session("local:2"):  # doctest: +SKIP
    ...     extract(manifest_df, "handcrafted", "blastscan-store")
    """
    address = resolve_scheduler(scheduler)
    if address is None or _ACTIVE:
        yield _ACTIVE[-1] if _ACTIVE else None
        return
    ex = _connect(address)
    _ACTIVE.append(ex)
    try:
        yield ex
    finally:
        _ACTIVE.remove(ex)
        ex.close()


def active() -> DaskExecutor | None:
    """The Dask executor of the current :func:`session`, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def executor(jobs: int) -> LocalExecutor | DaskExecutor:
    """The executor tasks should go to: the session's cluster, else ``jobs`` local processes."""
    return _ACTIVE[-1] if _ACTIVE else LocalExecutor(jobs)
