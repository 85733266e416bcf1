"""The extraction engine: compute the rows an extractor's store table lacks and publish them in chunks.

One path for every extractor: the extractors that run together (per-image ones sharing a context, such
as the handcrafted families; any other extractor alone) form a group, each task returns one result per
member, and :func:`_consume` publishes each member's rows. Per-image extractors run over chunks of images
as tasks (this process, worker processes or a Dask cluster: :mod:`blastscan.parallel`); batch extractors
(deep networks) read and process their own batches, here or a few batches per task on a cluster.
Finished rows are buffered for at most :data:`FLUSH_SECONDS` and published together, so a run killed
even with ``kill -9`` keeps all but the last seconds of its work, and a second run recomputes nothing.

Dask's ``distributed`` is imported only on a cluster worker (:func:`_worker_threads`): it is optional.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from blastscan.dataset import load_image
from blastscan.errors import BlastscanError
from blastscan.features.base import Extractor, get_extractor
from blastscan.features.store import FeatureStore
from blastscan.parallel import executor

__all__ = ["ExtractorRun", "FLUSH_ROWS", "FLUSH_SECONDS", "TASK_IMAGES", "BATCHES_PER_TASK", "compute_missing",
           "featurise_chunk", "featurise_batch"]

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
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


# A task's result: one ``(ok shas, float32 matrix, {sha: reason})`` per extractor of its group.
Result = tuple[list[str], np.ndarray, dict[str, str]]


def _result(ok: list[str], mats: list[np.ndarray], failures: dict[str, str], n_features: int) -> Result:
    return ok, np.vstack(mats) if mats else np.zeros((0, n_features), np.float32), failures


# -- per-image extractors: chunks of paths to worker processes -----------------------------------------
def featurise_chunk(extractors: list[Extractor], paths: list[str], shas: list[str],
                    wanted: list[list[bool]]) -> list[Result]:
    """Run in a worker: per image, decode once and build the extractors' shared context once
    (:attr:`PerImageExtractor.context`: e.g. one segmentation for all handcrafted families; the image
    itself for an extractor without one), then compute every extractor that still lacks the image
    (``wanted[k][i]``). A bad image becomes a failure of each extractor that wanted it, not a crash."""
    rows: list[list[np.ndarray]] = [[] for _ in extractors]
    oks: list[list[str]] = [[] for _ in extractors]
    fails: list[dict[str, str]] = [{} for _ in extractors]
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
            except Exception as exc:  # a bug on one odd cell must not lose a long run; the reason names it
                fails[k][sha] = _reason(exc)
    return [_result(oks[k], rows[k], fails[k], len(ext.feature_names)) for k, ext in enumerate(extractors)]


def _reason(exc: Exception) -> str:
    if isinstance(exc, BlastscanError):
        return exc.why or str(exc)
    return f"unexpected error ({type(exc).__name__}: {exc}); please report it"


def _per_image_results(extractors: list[Extractor], todos: list[pd.DataFrame], jobs: int) -> Iterator[list[Result]]:
    """Chunks of :data:`TASK_IMAGES` images (those any of ``extractors`` lacks) to :func:`featurise_chunk`,
    in this process, a local process pool or a Dask cluster (:func:`blastscan.parallel.executor` decides)."""
    union = pd.concat(todos).drop_duplicates("sha256")
    paths, shas = union["path"].tolist(), union["sha256"].tolist()
    need = [set(t["sha256"]) for t in todos]
    tasks = []
    for i in range(0, len(paths), TASK_IMAGES):
        s = shas[i:i + TASK_IMAGES]
        tasks.append((extractors, paths[i:i + TASK_IMAGES], s, [[x in n for x in s] for n in need]))
    yield from executor(jobs).map_unordered(featurise_chunk, tasks)


# -- batch extractors (deep networks): their own batches here, or tasks of a few batches on a cluster ---
@dataclass(frozen=True)
class _BatchOptions:
    """What this module reads of a batch extractor beyond :class:`Extractor` (deep backbones' options)."""

    batch_size: int | None
    weights_path: str | None
    engine: str | None
    engine_used: str  # what ran the forward, once it ran
    precision: str
    has_threads: bool  # a thread count that a cluster worker sets to its own


def _batch_options(ext: Extractor) -> _BatchOptions:
    """The one place this module reads deep-only attributes (absent on other extractors)."""
    return _BatchOptions(batch_size=getattr(ext, "batch_size", None), weights_path=getattr(ext, "weights_path", None),
                         engine=getattr(ext, "engine", None), engine_used=getattr(ext, "engine_used", None) or "",
                         precision=getattr(ext, "precision", None) or "", has_threads=hasattr(ext, "threads"))


# A worker process's networks, kept between its tasks (building one costs seconds; a task is a few
# batches), so module-level: it lives as long as the worker process. Empty in the client.
_WORKER_EXTRACTORS: dict[tuple, Extractor] = {}


def _worker_extractor(extractor: Extractor) -> Extractor:
    """The worker's own instance of ``extractor`` (its network is built on first use and then kept).

    Weights are looked for at the client's path, else where this worker finds them (its
    ``$BLASTSCAN_WEIGHTS_DIR`` or Keras cache); other weights than the client's are refused."""
    opts = _batch_options(extractor)
    key = (extractor.identity, opts.batch_size)
    if key not in _WORKER_EXTRACTORS:
        if opts.weights_path is not None and not os.path.exists(opts.weights_path):
            options = {**extractor.build_options(), "batch_size": opts.batch_size, "engine": opts.engine}
            rebuilt = get_extractor(extractor.name, **{k: v for k, v in options.items() if v is not None})
            if rebuilt.identity != extractor.identity:
                raise BlastscanError(f"{extractor.name} weights on a worker", f"they give features "
                                     f"{rebuilt.identity}, the client's {extractor.identity}; give every "
                                     "worker the client's weight files")
            extractor = rebuilt
        if opts.has_threads:
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


def _batch_result(res, shas: list[str]) -> Result:
    return ([shas[i] for i in res.indices], np.asarray(res.features, dtype=np.float32),
            {shas[i]: reason for i, reason in res.failures.items()})


def featurise_batch(extractor: Extractor, paths: list[str], shas: list[str]) -> list[Result]:
    """Run on a worker: a batch extractor over ``paths``, as one result (a list of one, as
    :func:`featurise_chunk`'s)."""
    ext = _worker_extractor(extractor)
    parts = [_batch_result(res, shas) for res in ext.compute_paths(paths)]
    failures = {sha: reason for _, _, f in parts for sha, reason in f.items()}
    return [_result([s for ok, _, _ in parts for s in ok], [m for _, m, _ in parts], failures,
                    len(ext.feature_names))]


def _task_images(n_images: int, batch_size: int, workers: int) -> int:
    """Images per deep task on a cluster: at most BATCHES_PER_TASK batches, in a number of tasks that is a
    multiple of ``workers``, so that no worker is left alone with the last task (192 cells in tasks of
    128 kept one of two workers idle half the time)."""
    most = BATCHES_PER_TASK * batch_size
    rounds = -(-n_images // (most * workers))  # ceil
    return max(1, -(-n_images // (rounds * workers)))


def _batch_results(extractor: Extractor, todo: pd.DataFrame, jobs: int) -> Iterator[list[Result]]:
    paths, shas = todo["path"].tolist(), todo["sha256"].tolist()
    ex = executor(jobs)
    if ex.remote:  # batches go to the cluster's workers; results come back here
        n = _task_images(len(todo), _batch_options(extractor).batch_size or TASK_IMAGES, ex.workers)
        yield from ex.map_unordered(featurise_batch, [(extractor, paths[i:i + n], shas[i:i + n])
                                                      for i in range(0, len(paths), n)])
        return
    for res in extractor.compute_paths(paths):  # here: the extractor overlaps its own reading and forward
        yield [_batch_result(res, shas)]


# -- planning, running, publishing ---------------------------------------------------------------------
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
    opts = _batch_options(t.ext)
    run = ExtractorRun(name=t.ext.name, identity=t.identity, n_images=len(unique), seconds=seconds,
                       engine=opts.engine_used, precision=opts.precision)
    failures = fstore.failures(t.identity)
    run.computed = int((~t.todo["sha256"].isin(failures)).sum())
    by_sha = dict(zip(unique["sha256"], unique["path"]))
    run.failures = sorted((by_sha[s], r) for s, r in failures.items() if s in by_sha)
    run.failed = len(run.failures)  # recorded failures count as failed, never as reused
    run.reused = run.n_images - run.computed - run.failed
    return run


def _groups(plans: list[_Todo]) -> list[list[int]]:
    """Plans with something to compute, in order, as the groups that run together: per-image extractors
    with the same non-empty context key form one group (at the place of the first); others run alone."""
    groups: list[list[int]] = []
    by_key: dict[str, list[int]] = {}
    for i, t in enumerate(plans):
        if not len(t.todo):
            continue
        key = t.ext.context if t.ext.kind == "per_image" else ""
        if key and key in by_key:
            by_key[key].append(i)
            continue
        groups.append([i])
        if key:
            by_key[key] = groups[-1]
    return groups


def compute_missing(extractors: list[Extractor], unique: pd.DataFrame, fstore: FeatureStore, *, jobs: int,
                    progress: bool, retry_failed: bool = False) -> list[ExtractorRun]:
    """Compute each extractor's features for the images of ``unique`` (``path, sha256``, one row per
    content) that its table in ``fstore`` lacks; return what was computed, reused and failed.

    Per-image extractors with the same ``context`` key (the handcrafted families) run together: one
    decode and one context (segmentation) per image for all of them; they share the time too.
    """
    plans = [_plan(ext, unique, fstore, retry_failed) for ext in extractors]
    seconds: dict[int, float] = {}
    for members in _groups(plans):
        group = [plans[i] for i in members]
        t0 = time.perf_counter()
        if group[0].ext.kind == "per_image":
            results = _per_image_results([t.ext for t in group], [t.todo for t in group], jobs)
        else:
            results = _batch_results(group[0].ext, group[0].todo, jobs)
        n = len(pd.concat([t.todo for t in group]).drop_duplicates("sha256"))
        bar = progress_bar(n, "+".join(t.ext.name for t in group), progress)
        _consume(results, fstore, group, bar)
        for t in group:
            fstore.compact(t.identity, COMPACT_MIN_PARTS)
        seconds.update(dict.fromkeys(members, time.perf_counter() - t0))
    return [_finish(t, unique, fstore, seconds.get(i, 0.0)) for i, t in enumerate(plans)]


def _consume(results: Iterable[list[Result]], fstore: FeatureStore, group: list[_Todo], bar) -> None:
    """Buffer each extractor's rows and failures and publish them together (one atomic chunk per table)
    every :data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS`, and at the end, also on Ctrl-C or an error."""
    bufs: list[tuple[list[str], list[np.ndarray], dict[str, str]]] = [([], [], {}) for _ in group]
    last = time.monotonic()

    def flush():
        nonlocal last
        for t, (shas, mats, fails) in zip(group, bufs):
            if shas or fails:
                fstore.write_chunk(t.identity, *_result(list(shas), mats, dict(fails), len(t.ext.feature_names)))
            shas.clear(), mats.clear(), fails.clear()
        last = time.monotonic()

    try:
        for chunk in results:
            done = set()
            for (ok, mat, failures), (shas, mats, fails) in zip(chunk, bufs):
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
        flush()  # what was finished is kept
        bar.close()
