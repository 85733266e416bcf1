"""Extract once: compute the features a manifest lacks, write them to the store, and read them back.

``extract`` computes only the rows missing from the store (keyed by image sha256), in chunks that are
published as soon as they are done, so an interrupted run loses at most the chunk in flight and a second
run recomputes nothing. ``load_features`` joins manifest rows to store rows for a feature set such as
``handcrafted+inception_v3``; ``compute_features`` does both for scoring new images.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError
from blastscan.features.base import Extractor, get_extractor, parse_feature_set
from blastscan.features.store import FeatureStore

__all__ = ["ExtractorRun", "ExtractSummary", "FeatureMatrix", "extract", "load_features", "compute_features"]

# Rows are buffered and published together: fewer, larger Parquet parts, still a bounded loss on a crash.
FLUSH_ROWS = 512
FLUSH_SECONDS = 30.0
# Images per task sent to a worker process: amortises process overhead, keeps memory bounded.
TASK_IMAGES = 32


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


@dataclass
class ExtractSummary:
    """The result of :func:`extract`: one :class:`ExtractorRun` per extractor."""

    runs: list[ExtractorRun]
    store: Path

    def format(self, max_failures: int = 20) -> str:
        lines = [f"feature store: {self.store}"]
        for r in self.runs:
            rate = f", {r.rate:.1f} images/s" if r.computed else ""
            lines.append(
                f"{r.name:<14} {r.identity}: {r.n_images} images: computed {r.computed}, "
                f"reused {r.reused}, failed {r.failed} ({r.seconds:.1f} s{rate})"
            )
            for path, reason in r.failures[:max_failures]:
                lines.append(f"  failed: {path}: {reason}")
            if len(r.failures) > max_failures:
                lines.append(f"  ... and {len(r.failures) - max_failures} more failures")
        return "\n".join(lines)

    @property
    def n_failed(self) -> int:
        return sum(r.failed for r in self.runs)


@dataclass
class FeatureMatrix:
    """Features for the manifest rows that have them, in manifest order.

    Attributes
    ----------
    X : ndarray of shape (n, d), float32
    feature_names : list of str
        Column order of ``X`` (recorded in every model).
    rows : DataFrame
        The manifest rows behind ``X`` (same order).
    dropped : DataFrame
        Manifest rows without features, with a ``reason`` column.
    extractors : list of dict
        ``Extractor.describe()`` of each extractor in the feature set.
    """

    X: np.ndarray
    feature_names: list[str]
    rows: pd.DataFrame
    dropped: pd.DataFrame
    extractors: list[dict]
    feature_set: str = ""


# -- extractor instances are reused across calls: a deep model is built once per process -------------
_EXTRACTOR_CACHE: dict[tuple, Extractor] = {}


def _options_key(name: str, options: Mapping[str, Any]) -> tuple:
    return (name, tuple(sorted((k, repr(v)) for k, v in options.items())))


def _extractor(name: str, options: Mapping[str, Any]) -> Extractor:
    key = _options_key(name, options)
    if key not in _EXTRACTOR_CACHE:
        ext = get_extractor(name, **dict(options))  # cheap: networks are built on first use
        # Options spelled differently (e.g. a default input size given explicitly when scoring a bundle)
        # can describe the same extractor: reuse the instance whose network may already be built.
        same = (e for e in _EXTRACTOR_CACHE.values() if e.name == ext.name and e.identity == ext.identity
                and getattr(e, "batch_size", None) == getattr(ext, "batch_size", None))
        _EXTRACTOR_CACHE[key] = next(same, ext)
    return _EXTRACTOR_CACHE[key]


def _extractor_names(feature_sets: Sequence[str] | str) -> list[str]:
    if isinstance(feature_sets, str):
        feature_sets = [s for s in feature_sets.split(",") if s.strip()]
    names: list[str] = []
    for spec in feature_sets:
        for n in parse_feature_set(spec):
            if n not in names:
                names.append(n)
    if not names:
        raise BlastscanError("--features", "no feature set given")
    return names


def _clean_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if v is not None}


def _progress(total: int, desc: str, enabled: bool):
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
    if jobs <= 1 or len(chunks) <= 1:
        for p, s in chunks:
            yield _featurise_chunk(extractor, p, s)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
    yield from parallel(delayed(_featurise_chunk)(extractor, p, s) for p, s in chunks)


def _batch_results(extractor, todo: pd.DataFrame) -> Iterator[tuple[list, np.ndarray, dict]]:
    shas = todo["sha256"].tolist()
    for res in extractor.compute_paths(todo["path"].tolist()):
        ok = [shas[i] for i in res.indices]
        failures = {shas[i]: reason for i, reason in res.failures.items()}
        yield ok, np.asarray(res.features, dtype=np.float32), failures


def _resolve_jobs(jobs: int | None) -> int:
    if jobs is None or jobs <= 0:
        return max(1, os.cpu_count() or 1)
    return jobs


def extract(
    manifest_df: pd.DataFrame,
    feature_sets: Sequence[str] | str,
    store: str | os.PathLike,
    *,
    jobs: int | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> ExtractSummary:
    """Compute the features of every image in ``manifest_df`` that the store lacks.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (columns ``path`` and ``sha256`` at least).
    feature_sets : list of str or str
        Feature sets such as ``["handcrafted", "inception_v3+vgg16"]`` (or a comma-separated string);
        every extractor they name is run once.
    store : path
        Feature store folder.
    jobs : int, optional
        Worker processes for per-image extractors (default: all cores).
    extractor_options : dict, optional
        ``weights_dir``, ``random_weights``, ``input_size``, ``batch_size``, ``precision`` for the deep backbones.
    progress : bool
        Show a progress bar with rate and ETA on stderr.
    retry_failed : bool
        Forget recorded failures and try those images again.

    Returns
    -------
    ExtractSummary
    """
    names = _extractor_names(feature_sets)
    options = _clean_options(extractor_options)
    fstore = FeatureStore(store)
    jobs = _resolve_jobs(jobs)
    if len(manifest_df) == 0:
        raise BlastscanError("manifest", "no images to extract features from")
    unique = manifest_df.drop_duplicates("sha256")[["path", "sha256"]]
    # Build (and validate) every extractor before computing anything: a missing weight file should stop
    # the run at once, not after an hour of handcrafted features.
    extractors = [_extractor(n, options) for n in names]
    for ext in extractors:  # e.g. --precision bf16 on a CPU without bfloat16
        getattr(ext, "check_runtime", lambda: None)()
    runs = []
    for name, ext in zip(names, extractors):
        identity = fstore.ensure_table(ext.describe(), ext.feature_names)
        if retry_failed:
            fstore.forget_failures(identity)
        known = fstore.known_shas(identity)
        todo = unique[~unique["sha256"].isin(known)]
        run = ExtractorRun(name=name, identity=identity, n_images=len(unique))
        t0 = time.perf_counter()
        if len(todo):
            results = (_per_image_results(ext, todo, jobs) if ext.kind == "per_image" else _batch_results(ext, todo))
            _consume(results, fstore, identity, len(ext.feature_names), _progress(len(todo), name, progress))
            fstore.compact(identity)
        run.seconds = time.perf_counter() - t0
        failures = fstore.failures(identity)
        run.computed = int((~todo["sha256"].isin(failures)).sum())
        by_sha = dict(zip(unique["sha256"], unique["path"]))
        run.failures = sorted((by_sha[s], r) for s, r in failures.items() if s in by_sha)
        run.failed = len(run.failures)  # recorded failures count as failed, never as reused
        run.reused = run.n_images - run.computed - run.failed
        runs.append(run)
    return ExtractSummary(runs=runs, store=Path(store))


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


def load_features(
    manifest_df: pd.DataFrame,
    feature_set: str,
    store: str | os.PathLike,
    *,
    extractor_options: Mapping[str, Any] | None = None,
    dataset_hint: str = "DATASET",
) -> FeatureMatrix:
    """Join manifest rows to the store's rows for ``feature_set``.

    Rows whose image an extractor could not featurise are dropped (listed in ``dropped`` with the
    reason); rows never computed are an error that names the command computing them.
    """
    names = parse_feature_set(feature_set)
    options = _clean_options(extractor_options)
    fstore = FeatureStore(store)
    shas = manifest_df["sha256"].tolist()
    blocks, all_names, described = [], [], []
    bad: dict[str, str] = {}
    for name in names:
        ext = _extractor(name, options)
        identity = ext.identity
        missing_hint = (
            f"run: blastscan extract {dataset_hint} --features {name} --store {store}"
            + (" (with the same --weights-dir / --input-size)" if ext.kind == "batch" else "")
        )
        if fstore.meta(identity) is None:
            raise BlastscanError(str(store), f"no '{name}' features ({identity}) for these images; {missing_hint}")
        df = fstore.read(identity, shas)
        failures = fstore.failures(identity)
        have = set(df.index)
        missing = [s for s in set(shas) if s not in have and s not in failures]
        if missing:
            raise BlastscanError(
                str(store), f"no '{name}' features for {len(missing)} of {len(set(shas))} images; {missing_hint}"
            )
        for s in set(shas):
            if s in failures and s not in bad:
                bad[s] = f"{name}: {failures[s]}"
        blocks.append(df)
        all_names.extend(fstore.meta(identity)["feature_names"])
        described.append(ext.describe())
    keep = ~manifest_df["sha256"].isin(bad)
    rows = manifest_df[keep].reset_index(drop=True)
    dropped = manifest_df[~keep].copy()
    dropped["reason"] = dropped["sha256"].map(bad)
    mats = [b.loc[rows["sha256"]].to_numpy(dtype=np.float32) for b in blocks]
    X = np.hstack(mats) if mats else np.zeros((len(rows), 0), np.float32)
    return FeatureMatrix(X=X, feature_names=all_names, rows=rows, dropped=dropped.reset_index(drop=True),
                         extractors=described, feature_set=feature_set)


def compute_features(
    inputs: pd.DataFrame | Iterable[str | os.PathLike],
    feature_set: str,
    *,
    store: str | os.PathLike | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> FeatureMatrix:
    """Features for new images (a manifest or a list of paths), reusing ``store`` when given.

    Without a store, features are computed in a temporary one and nothing is kept.
    """
    if isinstance(inputs, pd.DataFrame):
        manifest_df = inputs
    else:
        from blastscan.dataset import build_manifest

        manifest_df = build_manifest([str(p) for p in inputs]).df
    if len(manifest_df) == 0:
        raise BlastscanError("inputs", "no readable images")
    if store is None:
        with tempfile.TemporaryDirectory(prefix="blastscan-store-") as tmp:
            extract(manifest_df, [feature_set], tmp, jobs=jobs, extractor_options=extractor_options, progress=progress)
            return load_features(manifest_df, feature_set, tmp, extractor_options=extractor_options)
    extract(manifest_df, [feature_set], store, jobs=jobs, extractor_options=extractor_options, progress=progress)
    return load_features(manifest_df, feature_set, store, extractor_options=extractor_options)
