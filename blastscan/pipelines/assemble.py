"""Turn the grid's predictions into result tables: metrics per configuration and split kind (with subject-
bootstrap intervals), out-of-fold predictions and per-subject accuracy, and the ranking's best entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from blastscan.evaluation import (CI_METRICS, METRIC_NAMES, EvalSettings, TaskKey, assemble_holdout,
                                  assemble_subject_cv, bootstrap_ci, compute_metrics, per_subject_accuracy)
from blastscan.pipelines.grid import CompareData, ConfigSpec, GridRun, SplitPlan
from blastscan.evaluation.patient import patient_metrics, within_subject
from blastscan.evaluation.thresholds import choose_threshold
from blastscan.evaluation.calibration import brier_score
from blastscan.evaluation.metrics import within_fold_roc_auc
from blastscan.evaluation.decision import SPREAD_BOUND, operating_targets, spread_note, threshold_spread
from blastscan.report.results import (LEAKY, LEAKY_NOTE, OFFICIAL, OPERATING, SUBJECT_FOLD, SUBJECT_POOLED,
                                         WITHIN_SUBJECT, rank_configs)

__all__ = ["Tables", "assemble_grid", "PREDICTION_COLUMNS"]

PREDICTION_COLUMNS = ["path", "sha256", "subject", "group", "label", "split", "fold", "p_all", "threshold", "pred",
                      "config", "p_all_raw"]


@dataclass
class Tables:
    """Everything assembled from a grid run."""

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    per_subject: pd.DataFrame
    best: str | None
    config_records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@dataclass
class _Rows:
    metrics: list[dict] = field(default_factory=list)
    predictions: list[pd.DataFrame] = field(default_factory=list)
    subjects: list[pd.DataFrame] = field(default_factory=list)


def _metrics_row(info: dict, split: str, fold: str, rule: str, y, p, thr, subjects, groups, *,
                 headline: bool) -> dict:
    m = compute_metrics(y, p, thr, subjects=subjects, groups=groups)
    return {**info, "split": split, "fold": fold, "threshold_rule": rule, "headline": bool(headline), **m}


def _add_ci(row: dict, y, p, thr, groups, n_boot: int, seed: int) -> None:
    if n_boot <= 0:
        return
    ci = bootstrap_ci(y, p, thr, groups, n_boot=n_boot, seed=seed)
    for name, (lo, hi) in ci.items():
        row[f"{name}_ci_low"] = lo
        row[f"{name}_ci_high"] = hi


def _metric_columns(df: pd.DataFrame) -> list[str]:
    first = ["config", "feature_set", "classifier", "split", "fold", "threshold_rule", "headline", "threshold",
             "n", "n_all", "n_hem", "n_subjects", "n_groups", *METRIC_NAMES, "tn", "fp", "fn", "tp",
             "subject_roc_auc", "subject_call_accuracy", "n_subject_all", "n_subject_hem", "target_recall",
             "roc_auc_raw", "roc_auc_within_folds", "brier", "brier_raw", "threshold_spread", "same_as"]
    ci = [f"{m}_ci_{s}" for m in (*CI_METRICS, "subject_roc_auc", "subject_call_accuracy") for s in ("low", "high")]
    cols = [c for c in first + ci if c in df.columns]
    if "note" in df.columns:
        cols.append("note")
    return cols + [c for c in df.columns if c not in cols]


def _prediction_frame(base: pd.DataFrame, split: str, fold, p, thr, name: str, p_raw=None) -> pd.DataFrame:
    out = base.copy()
    out["split"] = split
    out["fold"] = fold
    out["p_all"] = p
    out["threshold"] = thr
    out["pred"] = np.where(p >= thr, "all", "hem")
    out["config"] = name
    out["p_all_raw"] = p if p_raw is None else p_raw
    return out


class _Config:
    """Assembles one configuration's rows from its fits."""

    def __init__(self, spec: ConfigSpec, data: CompareData, splits: SplitPlan,
                 got: Mapping[TaskKey, np.ndarray], settings: EvalSettings):
        self.name = spec.name
        self.info = {"config": spec.name, "feature_set": spec.feature_set, "classifier": spec.classifier}
        self.aliases = tuple(spec.aliases)
        self.data, self.splits, self.got, self.s = data, splits, got, settings
        self.base = data.rows[["path", "sha256", "subject", "group", "label"]].reset_index(drop=True)

    def subject_cv(self, rows: _Rows):
        d, s, plan = self.data, self.s, self.splits.plan
        targets = operating_targets(s.target_recall)
        cv = assemble_subject_cv(plan, self.splits.inner, self.got, d.y, groups=d.groups,
                                 target_recall=s.target_recall, targets=targets)
        for rule in (s.threshold_rule, s.other_rule):
            thr = cv.thresholds[rule]
            row = _metrics_row(self.info, SUBJECT_POOLED, "all", rule, d.y, cv.p_all, thr, d.subjects, d.groups,
                               headline=rule == s.threshold_rule)
            row["threshold"] = float(np.median(cv.fold_thresholds[rule]))
            row["threshold_spread"] = threshold_spread(cv.fold_thresholds[rule])
            row["note"] = (f"pooled out-of-fold over {plan.n_splits} subject-disjoint folds; per-fold thresholds "
                           f"{', '.join(f'{t:.3f}' for t in cv.fold_thresholds[rule])} (calibrated P(ALL))")
            if rule == s.threshold_rule:
                row["same_as"] = ", ".join(self.aliases)
                row["roc_auc_raw"] = compute_metrics(d.y, cv.p_raw, thr)["roc_auc"]  # before each fold's map
                row["roc_auc_within_folds"] = within_fold_roc_auc(d.y, cv.p_all, cv.fold)  # scale-free
                row["brier"] = brier_score(d.y, cv.p_all)
                row["brier_raw"] = brier_score(d.y, cv.p_raw)
                unstable = spread_note(cv.fold_thresholds[rule])
                if unstable:
                    row["note"] += f"; {unstable}"
                _add_ci(row, d.y, cv.p_all, thr, d.groups, s.n_boot, s.seed)
                row.update(patient_metrics(d.subjects, d.y, cv.p_all, thr, n_boot=s.n_boot, seed=s.seed))
            rows.metrics.append(row)
        for t in targets:  # operating points: each target's threshold chosen inside the training part
            thr = cv.at_target(t)
            row = _metrics_row(self.info, OPERATING, f"target {t:.2f}", "recall", d.y, cv.p_all, thr, d.subjects,
                               d.groups, headline=False)
            row["target_recall"] = t
            row["threshold"] = float(np.median(cv.target_thresholds[round(t, 4)]))
            row["threshold_spread"] = threshold_spread(cv.target_thresholds[round(t, 4)])
            row["note"] = (f"threshold for ALL recall >= {t:.2f} chosen per outer fold on its training part's inner "
                           f"out-of-fold P(ALL), measured on the held-out subjects; per-fold thresholds "
                           f"{', '.join(f'{x:.3f}' for x in cv.target_thresholds[round(t, 4)])}")
            if s.n_boot > 0:
                ci = bootstrap_ci(d.y, cv.p_all, thr, d.groups, n_boot=s.n_boot, seed=s.seed,
                                  metrics=("recall_all", "specificity", "weighted_f1"))
                for name, (lo, hi) in ci.items():
                    row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
            rows.metrics.append(row)
        for i, (_, te) in enumerate(plan.folds):
            thr_i = cv.fold_thresholds[s.threshold_rule][i]
            row = _metrics_row(self.info, SUBJECT_FOLD, str(i), s.threshold_rule, d.y[te], cv.p_all[te], thr_i,
                               d.subjects[te], d.groups[te], headline=True)
            row["threshold"] = thr_i
            row["target_recall"] = s.target_recall if s.threshold_rule == "recall" else np.nan
            row["note"] = "one class in this test fold: ROC-AUC/PR-AUC undefined" if i in plan.one_class_folds else ""
            rows.metrics.append(row)
        thr = cv.thresholds[s.threshold_rule]
        rows.predictions.append(_prediction_frame(self.base, "subject_cv", cv.fold.astype(str), cv.p_all, thr,
                                                  self.name, cv.p_raw))
        subj = per_subject_accuracy(d.subjects, d.groups, d.y, cv.p_all, thr)
        subj.insert(0, "config", self.name)
        rows.subjects.append(subj)
        return cv

    def within_subject(self, rows: _Rows, cv) -> None:
        """The opt-in view: each cell's P(ALL) pulled toward its subject's mean (all of a subject's cells
        sit in one test fold); thresholds chosen the same way on each training part's inner predictions."""
        d, s, plan = self.data, self.s, self.splits.plan
        p_ws = np.full(len(d.y), np.nan)
        thr = np.full(len(d.y), 0.5)
        for k, (tr, te) in enumerate(plan.folds):
            p_ws[te] = within_subject(cv.p_all[te], d.subjects[te])
            inner = cv.inner_p_all.get(k)
            if inner is not None:
                thr[te] = choose_threshold(d.y[tr], within_subject(inner, d.subjects[tr]), rule=s.threshold_rule,
                                           target_recall=s.target_recall)
        row = _metrics_row(self.info, WITHIN_SUBJECT, "all", s.threshold_rule, d.y, p_ws, thr, d.subjects,
                           d.groups, headline=False)
        row["threshold"] = float(np.median(thr))
        row["note"] = ("USES OTHER CELLS OF THE SAME PATIENT: P(ALL) = 0.5 * the cell's + 0.5 * its subject's mean; "
                       "never the headline")
        _add_ci(row, d.y, p_ws, thr, d.groups, s.n_boot, s.seed)
        rows.metrics.append(row)

    def official(self, rows: _Rows) -> dict | None:
        h, d, s = self.splits.holdout, self.data, self.s
        if h is None:
            return None
        te = h.test
        p_off, thr_off = assemble_holdout(h, self.got, d.y, groups=d.groups, target_recall=s.target_recall)
        thr_o = thr_off[s.threshold_rule]
        row = _metrics_row(self.info, OFFICIAL, "prelim", s.threshold_rule, d.y[te], p_off, thr_o, d.subjects[te],
                           d.groups[te], headline=True)
        row["threshold"] = thr_o
        row["note"] = ("official phase: trained on the training folds, tested on the preliminary-test cells"
                       + (f"; {h.note}" if h.note else ""))
        _add_ci(row, d.y[te], p_off, thr_o, d.groups[te], s.n_boot, s.seed)
        rows.metrics.append(row)
        rows.predictions.append(_prediction_frame(self.base.iloc[te], "official", "prelim", p_off, thr_o, self.name))
        return {"thresholds": thr_off, "n_train": int(len(h.train)), "n_test": int(len(te))}

    def leaky(self, rows: _Rows, cv) -> None:
        leaky, d, s = self.splits.leaky, self.data, self.s
        if not leaky:
            return
        p_leaky = np.full(len(d.y), np.nan)
        for i, (_, te) in enumerate(leaky):
            p_leaky[te] = self.got[TaskKey("leaky", i)]
        thr_l = float(np.median(cv.raw_fold_thresholds[s.threshold_rule]))  # leaky P(ALL) is not calibrated
        row = _metrics_row(self.info, LEAKY, "all", s.threshold_rule, d.y, p_leaky, thr_l, d.subjects, d.groups,
                           headline=True)
        row["threshold"] = thr_l
        row["note"] = (f"{LEAKY_NOTE} ({len(leaky)}-fold per-image StratifiedKFold; threshold = median "
                       "of the subject-disjoint folds' thresholds on uncalibrated P(ALL), so only the split differs)")
        rows.metrics.append(row)


def assemble_grid(data: CompareData, splits: SplitPlan, grid: GridRun, configs: list[ConfigSpec],
                  settings: EvalSettings) -> Tables:
    """Metrics, predictions and per-subject tables of every configuration the grid could fit."""
    rows, records, skipped = _Rows(), [], []
    for spec in configs:
        name, fs, c = spec.name, spec.feature_set, spec.classifier
        if name in grid.errors:
            skipped.append({"name": name, "feature_set": fs, "classifier": c, "reason": grid.errors[name]})
            continue
        cfg = _Config(spec, data, splits, grid.preds[name], settings)
        cv = cfg.subject_cv(rows)
        cfg.within_subject(rows, cv)
        official = cfg.official(rows)
        cfg.leaky(rows, cv)
        records.append({"name": name, "feature_set": fs, "classifier": c, "params": spec.params, "tune": spec.tune,
                        "chosen_params": {str(k): v for k, v in sorted(grid.chosen.get(name, {}).items())},
                        "fold_thresholds": cv.fold_thresholds, "official": official,
                        "calibrations": cv.calibrations, "inner_mode": cv.inner,
                        "target_thresholds": {f"{t:.2f}": v for t, v in cv.target_thresholds.items()},
                        "threshold_spread": threshold_spread(cv.fold_thresholds[settings.threshold_rule]),
                        "threshold_spread_bound": SPREAD_BOUND, "same_as": list(spec.aliases),
                        "fit_seconds": round(grid.seconds[name], 2)})
    metrics = pd.DataFrame(rows.metrics)
    if len(metrics):
        metrics = metrics[_metric_columns(metrics)]
    predictions = (pd.concat(rows.predictions, ignore_index=True) if rows.predictions
                   else pd.DataFrame(columns=PREDICTION_COLUMNS))
    per_subject = pd.concat(rows.subjects, ignore_index=True) if rows.subjects else pd.DataFrame()
    best = None
    if len(metrics):
        ranked = rank_configs(metrics)
        best = str(ranked.iloc[0]["config"]) if len(ranked) else None
        # the files list configurations in the ranking's order (ROC-AUC first), each with its rank
        rank_of = {c: i + 1 for i, c in enumerate(ranked["config"])}
        metrics.insert(0, "rank", [rank_of.get(c, len(rank_of) + 1) for c in metrics["config"]])
        metrics = metrics.iloc[np.argsort(metrics["rank"].to_numpy(), kind="stable")]
        metrics = metrics.reset_index(drop=True)
    return Tables(metrics=metrics, predictions=predictions, per_subject=per_subject, best=best,
                  config_records=records, skipped=skipped)
