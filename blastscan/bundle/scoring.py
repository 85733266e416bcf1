"""Scoring with a bundle: P(ALL), the call and the status of each cell, and the per-subject summary.

The one engine behind ``blastscan score`` (:mod:`blastscan.pipelines.score`, which streams it to CSV files),
the page (:mod:`blastscan.view.server`) and :meth:`Bundle.predict_proba <blastscan.bundle.core.Bundle.predict_proba>`:
features computed into a store (only what it lacks), the bundle's model and calibration, its threshold;
files that cannot be used get a row with the reason in ``status``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from blastscan.dataset import natural_key
from blastscan.dataset.images import odd_cell_size
from blastscan.dataset.inputs import input_manifest
from blastscan.errors import BlastscanError
from blastscan.evaluation.patient import LOW_SPECIFICITY, MIN_CELLS_FOR_FRACTION, blast_fraction

__all__ = ["COLUMNS", "SUBJECT_COLUMNS", "SCORE_TMP_PREFIX", "score_manifest", "score_frame", "flag_odd_sizes",
           "subject_rule_text", "TrainingRates", "SubjectTally", "subject_summary", "training_rates",
           "fraction_warnings"]

COLUMNS = ["path", "sha256", "subject", "p_all", "pred", "status"]
SUBJECT_COLUMNS = ["subject", "n_cells", "n_scored", "n_pred_all", "fraction_pred_all", "blast_fraction",
                   "blast_fraction_low", "blast_fraction_high", "blast_fraction_status", "mean_p_all", "call", "rule"]
SCORE_TMP_PREFIX = "blastscan-score-"  # + pid: temp stores of a killed run are removed by the next one


def score_manifest(bundle, manifest_df: pd.DataFrame, store: str | os.PathLike | None = None, *,
                   extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None,
                   built=None) -> pd.DataFrame:
    """P(ALL), call and status of each manifest row (same order), with ``bundle`` (a
    :class:`~blastscan.bundle.core.Bundle`).

    Features are computed into ``store`` (only what it lacks), or a temporary store deleted
    afterwards. ``built`` is the result of ``bundle.features()``, when the caller has it already. Returns
    ``manifest_df`` columns plus ``p_all`` (NaN where the image could not be featurised), ``pred``
    ("all"/"hem"/"") and ``status`` ("ok" or the reason).
    """
    fs = built if built is not None else bundle.features(extractor_options)
    out = manifest_df.reset_index(drop=True).copy()
    if len(out) == 0:
        out["p_all"], out["pred"], out["status"] = np.nan, "", ""
        return out
    unique = out.drop_duplicates("sha256")[["path", "sha256"]]
    with tempfile.TemporaryDirectory(prefix=f"{SCORE_TMP_PREFIX}{os.getpid()}-") as tmp:
        root = Path(store) if store is not None else Path(tmp)
        fs.ensure(unique, root, jobs=jobs, progress=False)
        fm = fs.read(unique, root)
    if fm.feature_names != bundle.feature_names:
        raise BlastscanError(bundle.origin(), "the features computed now have other columns than the model was "
                                           "trained on (the extractor changed without a version bump)")
    failed = dict(zip(fm.dropped["sha256"], fm.dropped["reason"]))
    row_of = {s: i for i, s in enumerate(fm.rows["sha256"])}
    shas = out["sha256"].to_numpy()
    ok = np.array([s in row_of for s in shas], dtype=bool)
    p = np.full(len(out), np.nan)
    if ok.any():
        p[ok] = bundle.proba(fm.X[[row_of[s] for s in shas[ok]]])
    out["p_all"] = p
    out["pred"] = np.where(ok, np.where(p >= bundle.threshold, "all", "hem"), "")
    out["status"] = [("ok" if k else failed.get(s, "no features computed")) for s, k in zip(shas, ok)]
    return out


def score_frame(bundle, inputs, store: str | os.PathLike | None = None, *,
                extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None) -> pd.DataFrame:
    """One row per input image: ``path, sha256, subject, p_all, pred, status``; files that could not be
    read are included with their reason (``p_all`` NaN). For large batches use
    :func:`blastscan.pipelines.score.score`, which streams to a CSV."""
    manifest_df, failed = input_manifest(inputs)
    scored = score_manifest(bundle, manifest_df, store, extractor_options=extractor_options, jobs=jobs)
    if "subject" not in scored:
        scored["subject"] = ""
    return pd.concat([scored[COLUMNS], failed[COLUMNS]], ignore_index=True) if len(failed) else scored[COLUMNS]


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


def subject_rule_text(fraction: float, threshold: float) -> str:
    """The per-subject call's rule, in words."""
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
    return SubjectTally().add(cells).frame(threshold, fraction, rates)


class SubjectTally:
    """Per-subject running sums, so the summary needs no second pass over a large batch."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}  # subject -> [cells, scored, predicted ALL, sum of P(ALL)]

    def add(self, cells: pd.DataFrame) -> "SubjectTally":
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
                         "call": call, "rule": subject_rule_text(fraction, threshold)})
        return pd.DataFrame(rows, columns=SUBJECT_COLUMNS)


def training_rates(bundle) -> TrainingRates:
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
