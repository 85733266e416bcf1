"""The extraction engine: compute the rows an extractor's store table lacks and publish them in chunks.

Per-image extractors run over chunks of images in worker processes; batch extractors (deep networks)
read and process their own batches. Finished rows are buffered for at most :data:`FLUSH_SECONDS` and
published together, so a run killed even with ``kill -9`` keeps all but the last seconds of its work,
and a second run recomputes nothing. Worker processes watch their parent and exit when it dies.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError
from blastscan.features.base import Extractor, get_extractor
from blastscan.features.store import FeatureStore
from blastscan.parallel import executor, exit_with_parent

__all__ = ["ExtractorRun", "FLUSH_ROWS", "FLUSH_SECONDS", "TASK_IMAGES", "BATCHES_PER_TASK", "compute_missing",
           "featurise_batch"]

# Rows are buffered and published together: a kill -9 loses at most FLUSH_SECONDS of finished work (plus
# the tasks in flight); the parts are merged into one file at the end of the run (compact).
FLUSH_ROWS = 256
FLUSH_SECONDS = 2.0
# a table is merged into one file after a run that leaves it this many part files (or more)
COMPACT_MIN_PARTS = 8
# Images per task sent to a worker process: small, so finished rows come back (and are published) often.
TASK_IMAGES = 8
# On a cluster a deep extractor's task is this many of its batches: the worker's read-ahead threads keep
# the network busy within a task, and a worker that dies loses at most this much.
BATCHES_PER_TASK = 4


@dataclass
class ExtractorRun:
    """What one extractor did over one manifest."""

    name: str
    identity: str
    n_images: int  # distinct images (by content) in the manifest
    computed: int = 0
    reused: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    engine: str = ""  # what ran a deep backbone's forward ("onnxruntime 1.32.0"), when it ran
    note: str = ""  # e.g. a float32 table reused in place of bf16 (FeatureSet.settle_precision)
    precision: str = ""  # a deep backbone's arithmetic ("float32", "bf16"); "" for other extractors

    @property
    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (hidden when ``enabled`` is false or there is nothing to do)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


# -- per-image extractors: chunks of paths to worker processes -----------------------------------------
def _exit_with_parent(parent_pid: int | None) -> None:
    """In a worker process: exit as soon as ``parent_pid`` is gone (see :func:`blastscan.parallel.exit_with_parent`)."""
    exit_with_parent(parent_pid)


def _featurise_chunk(extractor, paths: list[str], shas: list[str], parent_pid: int | None = None):
    """Run in a worker: load and featurise each image; a bad image becomes a failure, not a crash."""
    from blastscan.dataset import load_image

    _exit_with_parent(parent_pid)
    rows, ok, failures = [], [], {}
    for path, sha in zip(paths, shas):
        try:
            vec = extractor.compute(load_image(path))
        except BlastscanError as exc:
            failures[sha] = exc.why or str(exc)
            continue
        except Exception as exc:  # a bug on one odd cell must not lose a long run; the reason names it
            failures[sha] = f"unexpected error ({type(exc).__name__}: {exc}); please report it"
            continue
        rows.append(np.asarray(vec, dtype=np.float32))
        ok.append(sha)
    n = len(extractor.feature_names)
    mat = np.vstack(rows) if rows else np.zeros((0, n), np.float32)
    return ok, mat, failures


def _per_image_results(extractor, todo: pd.DataFrame, jobs: int) -> Iterator[tuple[list, np.ndarray, dict]]:
    paths, shas = todo["path"].tolist(), todo["sha256"].tolist()
    chunks = [(paths[i:i + TASK_IMAGES], shas[i:i + TASK_IMAGES]) for i in range(0, len(paths), TASK_IMAGES)]
    # in this process, a local process pool or a Dask cluster (blastscan.parallel decides)
    ex = executor(jobs)
    yield from ex.map_unordered(_featurise_chunk, [(extractor, p, s, _parent(ex)) for p, s in chunks])


def _parent(ex) -> int | None:
    """This process's pid for local pool workers to watch (they exit when it dies); None on a cluster,
    whose workers outlive any one client by design."""
    return None if ex.remote else os.getpid()


def _featurise_shared_chunk(extractors, paths: list[str], shas: list[str], wanted: list[list[bool]],
                            parent_pid: int | None = None):
    """Run in a worker: per image, decode once and build the extractors' shared context once
    (:attr:`PerImageExtractor.context`: e.g. one segmentation for all handcrafted families), then compute
    every extractor that still lacks the image (``wanted[k][i]``). Returns one ``(ok, mat, failures)``
    per extractor."""
    from blastscan.dataset import load_image

    _exit_with_parent(parent_pid)
    rows = [[] for _ in extractors]
    oks = [[] for _ in extractors]
    fails = [{} for _ in extractors]
    for i, (path, sha) in enumerate(zip(paths, shas)):
        need = [k for k in range(len(extractors)) if wanted[k][i]]
        try:
            ctx = extractors[need[0]].make_context(load_image(path))
        except Exception as exc:  # a bad image fails every extractor that wanted it, with the same reason
            for k in need:
                fails[k][sha] = _reason(exc)
            continue
        for k in need:
            try:
                rows[k].append(np.asarray(extractors[k].compute_context(ctx), dtype=np.float32))
                oks[k].append(sha)
            except Exception as exc:
                fails[k][sha] = _reason(exc)
    out = []
    for k, ext in enumerate(extractors):
        n = len(ext.feature_names)
        out.append((oks[k], np.vstack(rows[k]) if rows[k] else np.zeros((0, n), np.float32), fails[k]))
    return out


def _reason(exc: Exception) -> str:
    if isinstance(exc, BlastscanError):
        return exc.why or str(exc)
    return f"unexpected error ({type(exc).__name__}: {exc}); please report it"


def _shared_results(extractors, todos: list[pd.DataFrame], jobs: int):
    """Like :func:`_per_image_results` for extractors sharing a context: yields one result list per chunk."""
    union = pd.concat(todos).drop_duplicates("sha256")
    paths, shas = union["path"].tolist(), union["sha256"].tolist()
    need = [set(t["sha256"]) for t in todos]
    chunks = []
    for i in range(0, len(paths), TASK_IMAGES):
        p, s = paths[i:i + TASK_IMAGES], shas[i:i + TASK_IMAGES]
        chunks.append((p, s, [[x in n for x in s] for n in need]))
    ex = executor(jobs)
    yield from ex.map_unordered(_featurise_shared_chunk, [(extractors, *c, _parent(ex)) for c in chunks])


# -- batch extractors on a cluster: one model per worker, built once, tasks of a few batches --
_WORKER_EXTRACTORS: dict[tuple, Extractor] = {}


def _worker_extractor(extractor) -> Extractor:
    """The worker's own instance of ``extractor`` (its network is built on first use and then kept).

    Weights are looked for at the client's path, else where this worker finds them (its
    ``$BLASTSCAN_WEIGHTS_DIR`` or Keras cache); other weights than the client's are refused."""
    import os

    key = (extractor.identity, getattr(extractor, "batch_size", None))
    if key not in _WORKER_EXTRACTORS:
        path = getattr(extractor, "weights_path", None)
        if path is not None and not os.path.exists(path):
            options = {**extractor.build_options(), "batch_size": getattr(extractor, "batch_size", None),
                       "engine": getattr(extractor, "engine", None)}
            rebuilt = get_extractor(extractor.name, **{k: v for k, v in options.items() if v is not None})
            if rebuilt.identity != extractor.identity:
                raise BlastscanError(f"{extractor.name} weights on a worker", f"they give features "
                                     f"{rebuilt.identity}, the client's {extractor.identity}; give every "
                                     "worker the client's weight files")
            extractor = rebuilt
        if hasattr(extractor, "threads"):
            # the worker's own thread count, not every core: two local:2 workers of two network threads
            # each on two cores ran at 0.7-0.9x of one local process
            extractor.threads = _worker_threads()
        _WORKER_EXTRACTORS[key] = extractor
    return _WORKER_EXTRACTORS[key]


def _worker_threads() -> int | None:
    """Threads of the Dask worker this runs on (None outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def featurise_batch(extractor, paths: list[str], shas: list[str]):
    """Run on a worker: a batch extractor over ``paths``, as one ``(ok shas, matrix, failures)`` result."""
    ext = _worker_extractor(extractor)
    ok, mats, failures = [], [], {}
    for res in ext.compute_paths(paths):
        ok += [shas[i] for i in res.indices]
        mats.append(np.asarray(res.features, dtype=np.float32))
        failures.update({shas[i]: reason for i, reason in res.failures.items()})
    mat = np.vstack(mats) if mats else np.zeros((0, len(ext.feature_names)), np.float32)
    return ok, mat, failures


def _task_images(n_images: int, batch_size: int, workers: int) -> int:
    """Images per deep task on a cluster: at most BATCHES_PER_TASK batches, in a number of tasks that is a
    multiple of ``workers``, so that no worker is left alone with the last task (192 cells in tasks of
    128 kept one of two workers idle half the time)."""
    most = BATCHES_PER_TASK * batch_size
    rounds = -(-n_images // (most * workers))  # ceil
    return max(1, -(-n_images // (rounds * workers)))


def _batch_results(extractor, todo: pd.DataFrame, jobs: int = 1) -> Iterator[tuple[list, np.ndarray, dict]]:
    shas = todo["sha256"].tolist()
    ex = executor(jobs)
    if ex.remote:  # batches go to the cluster's workers; results come back here
        paths, n = todo["path"].tolist(), _task_images(len(todo), getattr(extractor, "batch_size", TASK_IMAGES),
                                                       ex.workers)
        yield from ex.map_unordered(featurise_batch, [(extractor, paths[i:i + n], shas[i:i + n])
                                                      for i in range(0, len(paths), n)])
        return
    for res in extractor.compute_paths(todo["path"].tolist()):
        ok = [shas[i] for i in res.indices]
        failures = {shas[i]: reason for i, reason in res.failures.items()}
        yield ok, np.asarray(res.features, dtype=np.float32), failures


@dataclass
class _Todo:
    ext: Extractor
    identity: str
    todo: pd.DataFrame


def _plan(ext: Extractor, unique: pd.DataFrame, fstore: FeatureStore, retry_failed: bool) -> _Todo:
    identity = fstore.ensure_table(ext.describe(), ext.feature_names)
    known = fstore.known_shas(identity)
    todo = unique[~unique["sha256"].isin(known)]
    recorded = fstore.failures(identity) if retry_failed else {}
    if recorded:  # nothing recorded: nothing to forget, and a read-only store stays usable
        fstore.check_writable(identity, f"--retry-failed would retry {len(recorded)} images")
        fstore.forget_failures(identity)
        known = fstore.known_shas(identity)
        todo = unique[~unique["sha256"].isin(known)]
    if len(todo):  # refused before any work, never after it (the rows could not be kept)
        fstore.check_writable(identity, f"{len(todo):,} images need new '{ext.name}' features")
    return _Todo(ext, identity, todo)


def _finish(t: _Todo, unique: pd.DataFrame, fstore: FeatureStore, seconds: float) -> ExtractorRun:
    run = ExtractorRun(name=t.ext.name, identity=t.identity, n_images=len(unique), seconds=seconds,
                       engine=getattr(t.ext, "engine_used", None) or "",
                       precision=getattr(t.ext, "precision", None) or "")
    failures = fstore.failures(t.identity)
    run.computed = int((~t.todo["sha256"].isin(failures)).sum())
    by_sha = dict(zip(unique["sha256"], unique["path"]))
    run.failures = sorted((by_sha[s], r) for s, r in failures.items() if s in by_sha)
    run.failed = len(run.failures)  # recorded failures count as failed, never as reused
    run.reused = run.n_images - run.computed - run.failed
    return run


def _shared_groups(plans: list[_Todo]) -> dict[str, list[int]]:
    """Per-image extractors with the same context key and something to compute, by key (two or more)."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(plans):
        key = getattr(t.ext, "context", "") if t.ext.kind == "per_image" else ""
        if key and len(t.todo):
            groups.setdefault(key, []).append(i)
    return {k: v for k, v in groups.items() if len(v) > 1}


def compute_missing(extractors: list[Extractor], unique: pd.DataFrame, fstore: FeatureStore, *, jobs: int,
                    progress: bool, retry_failed: bool = False) -> list[ExtractorRun]:
    """Compute each extractor's features for the images of ``unique`` (``path, sha256``, one row per
    content) that its table in ``fstore`` lacks; return what was computed, reused and failed.

    Per-image extractors with the same ``context`` key (the handcrafted families) run together: one
    decode and one context (segmentation) per image for all of them; they share the time too.
    """
    plans = [_plan(ext, unique, fstore, retry_failed) for ext in extractors]
    seconds: dict[int, float] = {}
    for members in _shared_groups(plans).values():
        group = [plans[i] for i in members]
        t0 = time.perf_counter()
        n = len(pd.concat([t.todo for t in group]).drop_duplicates("sha256"))
        bar = progress_bar(n, "+".join(t.ext.name for t in group), progress)
        _consume_shared(_shared_results([t.ext for t in group], [t.todo for t in group], jobs), fstore,
                        [t.identity for t in group], [len(t.ext.feature_names) for t in group], bar)
        for i in members:
            fstore.compact(plans[i].identity, COMPACT_MIN_PARTS)
            seconds[i] = time.perf_counter() - t0
    for i, t in enumerate(plans):
        if i in seconds or not len(t.todo):
            continue
        t0 = time.perf_counter()
        ext = t.ext
        results = (_per_image_results(ext, t.todo, jobs) if ext.kind == "per_image"
                   else _batch_results(ext, t.todo, jobs))
        _consume(results, fstore, t.identity, len(ext.feature_names), progress_bar(len(t.todo), ext.name, progress))
        fstore.compact(t.identity, COMPACT_MIN_PARTS)
        seconds[i] = time.perf_counter() - t0
    return [_finish(t, unique, fstore, seconds.get(i, 0.0)) for i, t in enumerate(plans)]


def _consume(results, fstore: FeatureStore, identity: str, n_features: int, bar) -> None:
    buf_shas: list[str] = []
    buf_mats: list[np.ndarray] = []
    buf_fail: dict[str, str] = {}
    last = time.monotonic()

    def flush():
        nonlocal buf_shas, buf_mats, buf_fail, last
        if buf_shas or buf_fail:
            mat = np.vstack(buf_mats) if buf_mats else np.zeros((0, n_features), np.float32)
            fstore.write_chunk(identity, buf_shas, mat, buf_fail)
        buf_shas, buf_mats, buf_fail, last = [], [], {}, time.monotonic()

    try:
        for ok, mat, failures in results:
            buf_shas.extend(ok)
            if len(ok):
                buf_mats.append(mat)
            buf_fail.update(failures)
            bar.update(len(ok) + len(failures))
            if len(buf_shas) + len(buf_fail) >= FLUSH_ROWS or time.monotonic() - last > FLUSH_SECONDS:
                flush()
    finally:
        # Also on Ctrl-C or an error: what was finished is kept.
        flush()
        bar.close()


def _consume_shared(results, fstore: FeatureStore, identities: list[str], n_features: list[int], bar) -> None:
    """:func:`_consume` for chunks that carry one result per extractor (see :func:`_shared_results`)."""
    bufs = [([], [], {}) for _ in identities]
    last = time.monotonic()

    def flush():
        nonlocal last
        for k, (shas, mats, fails) in enumerate(bufs):
            if shas or fails:
                mat = np.vstack(mats) if mats else np.zeros((0, n_features[k]), np.float32)
                fstore.write_chunk(identities[k], list(shas), mat, dict(fails))
            shas.clear(), mats.clear(), fails.clear()
        last = time.monotonic()

    try:
        for chunk in results:
            done = set()
            for k, (ok, mat, failures) in enumerate(chunk):
                shas, mats, fails = bufs[k]
                shas.extend(ok)
                if len(ok):
                    mats.append(mat)
                fails.update(failures)
                done.update(ok)
                done.update(failures)
            bar.update(len(done))
            if sum(len(b[0]) + len(b[2]) for b in bufs) >= FLUSH_ROWS or time.monotonic() - last > FLUSH_SECONDS:
                flush()
    finally:
        flush()
        bar.close()
