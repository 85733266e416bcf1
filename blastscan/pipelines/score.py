"""Score new cells with a bundle: P(ALL) and a call per cell in a CSV, and a per-subject summary beside it.

Images are processed in chunks (features computed, predicted, written), so memory stays flat however
many images are scored. A file that cannot be read or featurised gets a row with the reason in
``status``; it never stops the batch. Both CSVs are published atomically when the batch is done.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from blastscan._io import atomic_path, check_writable_file, remove_stale_temp
from blastscan.bundle import Bundle, load_bundle
from blastscan.bundle.scoring import (COLUMNS, SCORE_TMP_PREFIX, SubjectTally, flag_odd_sizes, fraction_warnings,
                                      score_manifest, subject_rule_text, training_rates)
from blastscan.dataset.inputs import input_manifest
from blastscan.errors import BlastscanError
from blastscan.evaluation.patient import within_subject
from blastscan.features.compute import TASK_IMAGES
from blastscan.options import DeepOptions, resolve_jobs
from blastscan.parallel import executor

__all__ = ["WITHIN_COLUMNS", "ScoreResult", "score", "subjects_path"]

WITHIN_COLUMNS = ["p_all_within_subject", "pred_within_subject"]
CHUNK_IMAGES = 512


def _prepare_output(out: Path) -> None:
    """Before the bundle is loaded or any image read: the output must be writable, and what a killed
    score left (its temp file beside the output, its temp stores, named by pid) is removed."""
    check_writable_file(out, "--output")
    remove_stale_temp(out.parent, f".{out.name}.")
    remove_stale_temp(tempfile.gettempdir(), SCORE_TMP_PREFIX)


def subjects_path(output_csv: str | os.PathLike) -> Path:
    """``predictions.csv`` -> ``predictions_subjects.csv``."""
    out = Path(output_csv)
    return out.with_name(f"{out.stem}_subjects.csv")


@dataclass
class ScoreResult:
    """What :func:`score` wrote and counted.

    Attributes
    ----------
    predictions_csv, subjects_csv : Path
    n_images : int
        Rows of the predictions CSV (every input image, usable or not).
    n_scored, n_failed, n_pred_all : int
    threshold : float
    subjects : DataFrame
        The per-subject summary (also in ``subjects_csv``).
    failures : dict
        status -> number of images that failed with it.
    examples : list of (path, status)
        The first few failures.
    """

    predictions_csv: Path
    subjects_csv: Path
    n_images: int
    n_scored: int
    n_failed: int
    n_pred_all: int
    threshold: float
    subjects: pd.DataFrame
    failures: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    subject_fraction: float = 0.5
    deep: str = ""  # what computed the deep features: "vgg16 bf16 on openvino" (the bundle's, or --precision's)

    def summary(self) -> str:
        share = f" ({self.n_pred_all / self.n_scored:.0%})" if self.n_scored else ""
        lines = [f"scored {self.n_scored} of {self.n_images} images in {self.seconds:.1f} s; "
                 f"{self.n_pred_all} predicted ALL{share} at P(ALL) >= {self.threshold:.4f}"]
        if self.deep:
            lines.append(f"deep features: {self.deep}")
        if self.n_failed:
            lines.append(f"{self.n_failed} image{'s' if self.n_failed != 1 else ''} could not be scored "
                         "(the status column says why):")
            lines += [f"  {path}: {status}" for path, status in self.examples]
            if self.n_failed > len(self.examples):
                lines.append(f"  ... and {self.n_failed - len(self.examples)} more")
        s = self.subjects
        if len(s):
            n_all = int((s["call"] == "all").sum())
            lines.append(f"{len(s)} subjects: {n_all} called ALL, {int((s['call'] == 'hem').sum())} HEM "
                         f"({subject_rule_text(self.subject_fraction, self.threshold)}); blast_fraction in the per-subject "
                         "file corrects the share of cells called ALL for the model's training recall and "
                         "specificity, with a 95% interval that carries their patient-to-patient spread")
            few = int(s["blast_fraction_status"].astype(str).str.startswith("too few").sum())
            if few:
                lines.append(f"{few} subject{'s have' if few != 1 else ' has'} too few scored cells for a blast "
                             "fraction to act on (blast_fraction_status)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"predictions: {self.predictions_csv}; per subject: {self.subjects_csv}")
        return "\n".join(lines)


def _add_within_subject(path: Path, threshold: float) -> None:
    """Add the within-subject columns to the predictions CSV at ``path`` (rewritten atomically)."""
    df = pd.read_csv(path, dtype={"subject": str, "sha256": str, "status": str, "pred": str})
    subj = df["subject"].fillna("").astype(str)
    ok = df["p_all"].notna() & (subj != "")
    p = np.full(len(df), np.nan)
    if ok.any():
        p[ok.to_numpy()] = within_subject(df.loc[ok, "p_all"].to_numpy(), subj[ok].to_numpy())
    df[WITHIN_COLUMNS[0]] = p
    df[WITHIN_COLUMNS[1]] = np.where(np.isnan(p), "", np.where(p >= threshold, "all", "hem"))
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


@dataclass
class _Counts:
    """What the rows written so far add up to (per subject, scored, predicted ALL, failures)."""

    tally: SubjectTally = field(default_factory=SubjectTally)
    scored: int = 0
    all: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def record(self, rows: pd.DataFrame, fh) -> None:
        rows[COLUMNS].to_csv(fh, header=False, index=False)
        self.tally.add(rows)
        ok = rows["status"].astype(str).str.startswith("ok")
        self.scored += int(ok.sum())
        self.all += int((rows["pred"] == "all").sum())
        for path, status in zip(rows.loc[~ok, "path"], rows.loc[~ok, "status"]):
            self.failures[status] = self.failures.get(status, 0) + 1
            if len(self.examples) < 10:
                self.examples.append((path, status))


def _write_predictions(out: Path, bundle: Bundle, built, manifest_df: pd.DataFrame, failed: pd.DataFrame,
                       counts: _Counts, *, store, chunk: int, jobs, extractor_options, progress: bool) -> None:
    """Score ``manifest_df`` chunk by chunk into the predictions CSV (published when complete)."""
    bar = tqdm(total=len(manifest_df), desc="score", unit="img", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        with atomic_path(out, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
            fh.write(",".join(COLUMNS) + "\n")
            for start in range(0, len(manifest_df), chunk):
                part = manifest_df.iloc[start:start + chunk]
                with tempfile.TemporaryDirectory(prefix=f"{SCORE_TMP_PREFIX}{os.getpid()}-") as chunk_store:
                    # without a store each chunk gets its own, so nothing grows with the batch
                    rows = score_manifest(bundle, part, store if store is not None else chunk_store,
                                      extractor_options=extractor_options, jobs=jobs, built=built)
                counts.record(flag_odd_sizes(rows), fh)
                bar.update(len(part))
            if len(failed):
                counts.record(failed, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise BlastscanError(str(out), f"cannot write ({exc.strerror or exc})") from None
    finally:
        bar.close()


def score(
    bundle_or_path: Bundle | str | os.PathLike,
    inputs,
    output_csv: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    trust: bool = False,
    jobs: int | None = None,
    progress: bool = True,
    subject_fraction: float = 0.5,
    chunk_images: int | None = None,
    within_subject: bool = False,
) -> ScoreResult:
    """Score ``inputs`` with a bundle; write per-cell predictions and a per-subject summary.

    Parameters
    ----------
    bundle_or_path : Bundle or path
        A bundle, or a bundle file (loaded with :func:`blastscan.bundle.load_bundle`; only
        load bundles you trust).
    inputs : path or list of paths
        Image files, folders (searched recursively) and CSVs with a ``path`` column.
    output_csv : path
        Per-cell CSV: ``path, sha256, subject, p_all, pred, status``. The per-subject summary goes to
        ``<stem>_subjects.csv`` beside it.
    store : path, optional
        Feature store to reuse and fill; by default features go to a temporary store that is deleted.
    extractor_options : DeepOptions or dict, optional
        Where things are now (``weights_dir``, ``batch_size``), and ``precision`` / ``engine`` when asked;
        the bundle's recorded extractor config decides the features.
    trust : bool
        Load a bundle whose sidecar is missing or does not match.
    jobs : int, optional
        Processes for per-image features (default all cores).
    progress : bool
        Progress bar on stderr.
    subject_fraction : float
        A subject is called ALL when at least this fraction of its scored cells are predicted ALL.
    chunk_images : int, optional
        Images per chunk (default 512, more with many cores).
    within_subject : bool
        Opt-in: also write ``p_all_within_subject`` and ``pred_within_subject``, each cell's P(ALL)
        combined with those of the other cells of its subject (uses other cells of the same patient:
        only meaningful when a patient's cells are scored together).

    Returns
    -------
    ScoreResult
    """
    t0 = time.perf_counter()
    out = Path(output_csv)
    if out.suffix.lower() != ".csv":
        raise BlastscanError(str(out), "predictions are written as .csv")
    if not 0 < subject_fraction <= 1:
        raise BlastscanError("subject_fraction", f"must be in (0, 1] (got {subject_fraction})")
    _prepare_output(out)
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path, trust=trust)
    built = bundle.features(extractor_options)  # a wrong weights file stops here, before any image is read
    manifest_df, failed = input_manifest(inputs, progress=progress, store=store)
    if "subject" not in manifest_df:
        manifest_df = manifest_df.assign(subject="")
    # enough tasks per chunk for every worker of the pool or cluster
    chunk = chunk_images or max(CHUNK_IMAGES, 2 * executor(resolve_jobs(jobs)).workers * TASK_IMAGES)
    counts = _Counts()
    _write_predictions(out, bundle, built, manifest_df, failed, counts, store=store, chunk=chunk, jobs=jobs,
                       extractor_options=extractor_options, progress=progress)
    tally, failures, examples = counts.tally, counts.failures, counts.examples
    rates = training_rates(bundle)
    subjects = tally.frame(bundle.threshold, subject_fraction, rates)
    if within_subject:
        _add_within_subject(out, bundle.threshold)
    subj_csv = subjects_path(out)
    with atomic_path(subj_csv, suffix=".csv") as tmp:
        subjects.to_csv(tmp, index=False)
    n_images = len(manifest_df) + len(failed)
    return ScoreResult(predictions_csv=out, subjects_csv=subj_csv, n_images=n_images, n_scored=counts.scored,
                       n_failed=n_images - counts.scored, n_pred_all=counts.all, threshold=bundle.threshold,
                       subjects=subjects, failures=failures, examples=examples,
                       seconds=time.perf_counter() - t0,
                       warnings=list(bundle.warnings) + (fraction_warnings(rates) if len(subjects) else []),
                       subject_fraction=subject_fraction,
                       deep=", ".join(f"{s['name']} {s['precision']} on {s['engine']}" for s in built.specs()
                                      if s.get("engine")))
