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
from blastscan.dataset import natural_key
from blastscan.dataset.images import odd_cell_size
from blastscan.dataset.inputs import input_manifest
from blastscan.errors import BlastscanError
from blastscan.evaluation.patient import LOW_SPECIFICITY, MIN_CELLS_FOR_FRACTION, blast_fraction, within_subject
from blastscan.features.compute import TASK_IMAGES
from blastscan.options import DeepOptions, resolve_jobs
from blastscan.parallel import executor

__all__ = ["COLUMNS", "SUBJECT_COLUMNS", "WITHIN_COLUMNS", "ScoreResult", "TrainingRates", "score",
           "subject_summary", "subjects_path", "training_rates", "fraction_warnings", "flag_odd_sizes"]

COLUMNS = ["path", "sha256", "subject", "p_all", "pred", "status"]
SUBJECT_COLUMNS = ["subject", "n_cells", "n_scored", "n_pred_all", "fraction_pred_all", "blast_fraction",
                   "blast_fraction_low", "blast_fraction_high", "blast_fraction_status", "mean_p_all", "call", "rule"]
WITHIN_COLUMNS = ["p_all_within_subject", "pred_within_subject"]
CHUNK_IMAGES = 512


SCORE_TMP_PREFIX = "blastscan-score-"  # + pid: temp stores of a killed run are removed by the next one


def _prepare_output(out: Path) -> None:
    """Before the bundle is loaded or any image read: the output must be writable, and what a killed
    score left (its temp file beside the output, its temp stores, named by pid) is removed."""
    check_writable_file(out, "--output")
    remove_stale_temp(out.parent, f".{out.name}.")
    remove_stale_temp(tempfile.gettempdir(), SCORE_TMP_PREFIX)


def flag_odd_sizes(rows: pd.DataFrame) -> pd.DataFrame:
    """Scored cells whose size is far from a single-cell image keep their score, with a warning status."""
    if not len(rows) or "width" not in rows:
        return rows
    status = rows["status"].astype(str).tolist()
    for i, (st, w, h) in enumerate(zip(status, rows["width"], rows["height"])):
        warn = odd_cell_size(int(w), int(h)) if st == "ok" and w and h else None
        if warn:
            status[i] = f"ok (warning: {warn})"
    return rows.assign(status=status)


_flag_odd_sizes = flag_odd_sizes  # the name tests and older callers use


def subjects_path(output_csv: str | os.PathLike) -> Path:
    """``predictions.csv`` -> ``predictions_subjects.csv``."""
    out = Path(output_csv)
    return out.with_name(f"{out.stem}_subjects.csv")


def _rule_text(fraction: float, threshold: float) -> str:
    return (f"ALL if >= {fraction:.0%} of scored cells are predicted ALL "
            f"(a cell is ALL when P(ALL) >= {threshold:.4f})")


@dataclass(frozen=True)
class TrainingRates:
    """The model's subject-disjoint out-of-fold ALL recall and specificity on its training data, and the
    record of their uncertainty (``operating_point_bootstrap``; None in bundles made before it existed)."""

    recall: float | None = None
    specificity: float | None = None
    bootstrap: dict | None = None

    @classmethod
    def of(cls, rates) -> "TrainingRates":
        """``rates`` as a TrainingRates: itself, or a ``(recall, specificity)`` pair."""
        return rates if isinstance(rates, cls) else cls(*tuple(rates or (None, None))[:2])


def subject_summary(cells: pd.DataFrame, threshold: float, fraction: float = 0.5,
                    rates: "TrainingRates | tuple[float | None, float | None]" = (None, None)) -> pd.DataFrame:
    """Per-subject counts and call from per-cell rows (``subject, p_all, pred``; NaN ``p_all`` = not scored).

    A subject is called ALL when at least ``fraction`` of its scored cells are predicted ALL, HEM
    otherwise, and gets no call without scored cells. Cells without a subject are left out.
    ``blast_fraction`` (with a 95% interval) corrects the share of cells called ALL for the model's
    ``rates`` (:class:`TrainingRates`: ALL recall and specificity measured subject-disjoint on its training
    data, and their bootstrap record): see :func:`blastscan.evaluation.patient.blast_fraction`. Without
    rates it is the plain share. ``blast_fraction_status`` says ``ok``, ``too few cells (< 20 scored)``
    (the numbers are still given, with their wide interval), or that the bundle predates the honest
    interval.
    """
    return _Tally().add(cells).frame(threshold, fraction, rates)


class _Tally:
    """Per-subject running sums, so the summary needs no second pass over a large batch."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}  # subject -> [cells, scored, predicted ALL, sum of P(ALL)]

    def add(self, cells: pd.DataFrame) -> "_Tally":
        subj = cells["subject"].astype("string").fillna("").astype(str).str.strip()
        p = pd.to_numeric(cells["p_all"], errors="coerce").to_numpy(dtype=float)
        scored = ~np.isnan(p)
        part = pd.DataFrame({"subject": subj.to_numpy(), "n": 1, "scored": scored.astype(int),
                             "all": (scored & (cells["pred"].astype(str).to_numpy() == "all")).astype(int),
                             "p": np.where(scored, p, 0.0)})
        part = part[part["subject"] != ""]
        for s, row in part.groupby("subject", sort=False)[["n", "scored", "all", "p"]].sum().iterrows():
            self.sums[s] = self.sums.get(s, np.zeros(4)) + row.to_numpy(dtype=float)
        return self

    def frame(self, threshold: float, fraction: float, rates=(None, None)) -> pd.DataFrame:
        rates = TrainingRates.of(rates)
        rows = []
        for s in sorted(self.sums, key=natural_key):
            n, scored, n_all, p_sum = self.sums[s]
            frac = n_all / scored if scored else np.nan
            call = "" if not scored else ("all" if frac >= fraction - 1e-12 else "hem")
            est, lo, hi = blast_fraction(int(n_all), int(scored), rates.recall, rates.specificity,
                                         bootstrap=rates.bootstrap)
            notes = []
            if not scored:
                notes.append("no cells scored")
            elif scored < MIN_CELLS_FOR_FRACTION:
                notes.append(f"too few cells (< {MIN_CELLS_FOR_FRACTION} scored)")
            if scored and (rates.recall is None or rates.specificity is None):
                notes.append("plain share: the bundle has no training recall/specificity")
            elif scored and not rates.bootstrap:
                notes.append("old bundle: interval ignores the uncertainty of recall and specificity")
            status = "; ".join(notes) or "ok"
            rows.append({"subject": s, "n_cells": int(n), "n_scored": int(scored), "n_pred_all": int(n_all),
                         "fraction_pred_all": frac, "blast_fraction": est, "blast_fraction_low": lo,
                         "blast_fraction_high": hi, "blast_fraction_status": status,
                         "mean_p_all": p_sum / scored if scored else np.nan,
                         "call": call, "rule": _rule_text(fraction, threshold)})
        return pd.DataFrame(rows, columns=SUBJECT_COLUMNS)


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
                         f"({_rule_text(self.subject_fraction, self.threshold)}); blast_fraction in the per-subject "
                         "file corrects the share of cells called ALL for the model's training recall and "
                         "specificity, with a 95% interval that carries their patient-to-patient spread")
            few = int(s["blast_fraction_status"].astype(str).str.startswith("too few").sum())
            if few:
                lines.append(f"{few} subject{'s have' if few != 1 else ' has'} too few scored cells for a blast "
                             "fraction to act on (blast_fraction_status)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"predictions: {self.predictions_csv}; per subject: {self.subjects_csv}")
        return "\n".join(lines)


def training_rates(bundle: Bundle) -> TrainingRates:
    """ALL recall and specificity of the bundle's subject-disjoint out-of-fold training metrics, with their
    bootstrap record when the bundle has one (bundles from before blastscan recorded it have not)."""
    tm = bundle.metadata.get("training_metrics") or {}
    met = tm.get("metrics") or {}
    return TrainingRates(met.get("recall_all"), met.get("specificity"), tm.get("operating_point_bootstrap"))


def fraction_warnings(rates: TrainingRates) -> list[str]:
    """What a reader of the blast fractions must know about the bundle they come from."""
    out = []
    spec = rates.specificity
    if spec is not None and np.isfinite(spec) and spec < LOW_SPECIFICITY:
        out.append(f"the model's training specificity is {spec:.3f} (below {LOW_SPECIFICITY}): over "
                   f"{1 - spec:.0%} of a healthy subject's cells are called ALL, so blast fractions are "
                   "imprecise (wide intervals)")
    if rates.recall is not None and rates.specificity is not None and not rates.bootstrap:
        out.append("this bundle predates the blast-fraction interval that carries the uncertainty of recall "
                   "and specificity: its intervals are the old, too narrow ones (make the bundle again with "
                   "blastscan train or export)")
    return out


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

    tally: "_Tally" = field(default_factory=lambda: _Tally())
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
                    rows = bundle.score_manifest(part, store if store is not None else chunk_store,
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
