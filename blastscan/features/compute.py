"""The extraction engine: compute the rows an extractor's store table lacks and publish them in chunks.

Per-image extractors run over chunks of images in worker processes; batch extractors (deep networks)
read and process their own batches. Finished rows are buffered and published together, so an
interrupted run keeps what it finished and a second run recomputes nothing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError
from blastscan.features.base import Extractor, get_extractor
from blastscan.features.store import FeatureStore
from blastscan.parallel import executor

__all__ = ["ExtractorRun", "FLUSH_ROWS", "FLUSH_SECONDS", "TASK_IMAGES", "BATCHES_PER_TASK", "compute_missing",
           "featurise_batch"]

# Rows are buffered and published together: fewer, larger Parquet parts, still a bounded loss on a crash.
FLUSH_ROWS = 512
FLUSH_SECONDS = 30.0
# Images per task sent to a worker process: amortises process overhead, keeps memory bounded.
TASK_IMAGES = 32
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

    @property
    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (hidden when ``enabled`` is false or there is nothing to do)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


# -- per-image extractors: chunks of paths to worker processes -----------------------------------------
def _featurise_chunk(extractor, paths: list[str], shas: list[str]):
    """Run in a worker: load and featurise each image; a bad image becomes a failure, not a crash."""
    from blastscan.dataset import load_image

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
    # issue 17: in this process, a local process pool or a Dask cluster (blastscan.parallel decides)
    yield from executor(jobs).map_unordered(_featurise_chunk, [(extractor, p, s) for p, s in chunks])


# -- batch extractors on a cluster: one model per worker, built once, tasks of a few batches (issue 17) --
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
            options = {**extractor.build_options(), "batch_size": getattr(extractor, "batch_size", None)}
            rebuilt = get_extractor(extractor.name, **{k: v for k, v in options.items() if v is not None})
            if rebuilt.identity != extractor.identity:
                raise BlastscanError(f"{extractor.name} weights on a worker", f"they give features "
                                     f"{rebuilt.identity}, the client's {extractor.identity}; give every "
                                     "worker the client's weight files")
            extractor = rebuilt
        _WORKER_EXTRACTORS[key] = extractor
    return _WORKER_EXTRACTORS[key]


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


def _batch_results(extractor, todo: pd.DataFrame, jobs: int = 1) -> Iterator[tuple[list, np.ndarray, dict]]:
    shas = todo["sha256"].tolist()
    ex = executor(jobs)
    if ex.remote:  # issue 17: batches go to the cluster's workers; results come back here
        paths, n = todo["path"].tolist(), BATCHES_PER_TASK * getattr(extractor, "batch_size", TASK_IMAGES)
        yield from ex.map_unordered(featurise_batch, [(extractor, paths[i:i + n], shas[i:i + n])
                                                      for i in range(0, len(paths), n)])
        return
    for res in extractor.compute_paths(todo["path"].tolist()):
        ok = [shas[i] for i in res.indices]
        failures = {shas[i]: reason for i, reason in res.failures.items()}
        yield ok, np.asarray(res.features, dtype=np.float32), failures


def compute_missing(ext: Extractor, unique: pd.DataFrame, fstore: FeatureStore, *, jobs: int, progress: bool,
                    retry_failed: bool = False) -> ExtractorRun:
    """Compute ``ext``'s features for the images of ``unique`` (``path, sha256``, one row per content)
    that its table in ``fstore`` lacks; return what was computed, reused and failed."""
    identity = fstore.ensure_table(ext.describe(), ext.feature_names)
    if retry_failed:
        fstore.forget_failures(identity)
    known = fstore.known_shas(identity)
    todo = unique[~unique["sha256"].isin(known)]
    run = ExtractorRun(name=ext.name, identity=identity, n_images=len(unique))
    t0 = time.perf_counter()
    if len(todo):
        results = (_per_image_results(ext, todo, jobs) if ext.kind == "per_image"
                   else _batch_results(ext, todo, jobs))
        _consume(results, fstore, identity, len(ext.feature_names), progress_bar(len(todo), ext.name, progress))
        fstore.compact(identity)
    run.seconds = time.perf_counter() - t0
    failures = fstore.failures(identity)
    run.computed = int((~todo["sha256"].isin(failures)).sum())
    by_sha = dict(zip(unique["sha256"], unique["path"]))
    run.failures = sorted((by_sha[s], r) for s, r in failures.items() if s in by_sha)
    run.failed = len(run.failures)  # recorded failures count as failed, never as reused
    run.reused = run.n_images - run.computed - run.failed
    return run


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
