"""What a comparison produced, and how its configurations rank: the types the report reads.

The report depends on this module, never on ``compare``; ``compare`` builds a :class:`CompareResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blastscan.evaluation.settings import rule_text

__all__ = ["SUBJECT_POOLED", "SUBJECT_FOLD", "LEAKY", "OFFICIAL", "WITHIN_SUBJECT", "OPERATING", "LEAKY_NOTE", "SPLIT_KINDS", "CompareResult",
           "rank_configs", "fmt", "ci_text", "with_ci", "rule_sentence", "split_sentence", "best_sentence"]

# split kinds, as written in metrics.csv
SUBJECT_POOLED = "subject_cv_pooled"
SUBJECT_FOLD = "subject_cv_fold"
LEAKY = "leaky_image_cv_pooled"
OFFICIAL = "official_prelim"
WITHIN_SUBJECT = "subject_cv_within_subject"
OPERATING = "subject_cv_operating_point"
LEAKY_NOTE = "leaky: cells of one patient on both sides — do not trust"
SPLIT_KINDS = {SUBJECT_POOLED: "subject-disjoint CV, pooled out-of-fold (headline)",
               SUBJECT_FOLD: "subject-disjoint CV, one outer fold",
               OFFICIAL: "official phase: training folds -> preliminary test",
               OPERATING: "subject-disjoint CV, pooled out-of-fold, at one target ALL recall (threshold chosen per "
                          "outer fold on its training part; an operating point a user can choose)",
               LEAKY: LEAKY_NOTE,
               WITHIN_SUBJECT: "subject-disjoint CV, each cell's P(ALL) combined with its subject's other cells "
                               "(uses other cells of the same patient; never the headline)"}


@dataclass
class CompareResult:
    """Everything a comparison produced (also written under ``run_dir``).

    Attributes
    ----------
    run_dir : Path
    best : str or None
        Name (``feature_set/classifier``) of the configuration with the best pooled subject-disjoint
        ROC-AUC (threshold-free; ties: weighted F1); None when every configuration was skipped.
    metrics : DataFrame
        One row per configuration x split kind (``subject_cv_pooled``, ``subject_cv_fold``,
        ``leaky_image_cv_pooled``, ``official_prelim``), with 95% CI columns for pooled rows.
    predictions : DataFrame
        Out-of-fold P(ALL) per image and configuration (subject CV and official phase).
    per_subject : DataFrame
        Per-subject accuracy per configuration (subject CV).
    run : dict
        The content of ``run.json``.
    skipped : list of dict
        ``{name, feature_set, classifier, reason}`` for what could not be evaluated.
    notes : list of str
        Adaptations to the data (fewer folds, one-class folds, dropped images, ...).
    extracted : list of ExtractSummary
        What was computed into the store before the comparison (features it lacked).
    """

    run_dir: Path
    best: str | None
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    per_subject: pd.DataFrame
    run: dict
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extracted: list = field(default_factory=list)
    screening: dict = field(default_factory=dict)  # feature set -> per-feature cell / subject AUCs

    def best_row(self) -> pd.Series | None:
        """The pooled subject-disjoint metrics row of the best configuration."""
        if self.best is None:
            return None
        m = self.metrics
        sel = m[(m["config"] == self.best) & (m["split"] == SUBJECT_POOLED) & (m["headline"])]
        return sel.iloc[0]

    def summary(self) -> str:
        """A few lines for the terminal: the best configuration, what its numbers rest on, where the report is."""
        lines = [self.run["leaky_split"]] if self.run.get("leaky_split") else []
        row = self.best_row()
        if row is None:
            lines.append("no configuration could be evaluated")
        else:
            lines.append(best_sentence(self))
            ranked = rank_configs(self.metrics)
            if len(ranked) > 1:
                lines.append("ranking by subject-disjoint ROC-AUC, mean within the outer folds (threshold-free); "
                             "pooled ROC-AUC [95% CI]; at the shipped threshold rule: weighted F1 [95% CI], ALL "
                             "recall, specificity:")
                for _, r in ranked.iterrows():
                    same = f"  (= {r['same_as']})" if isinstance(r.get("same_as"), str) and r["same_as"] else ""
                    lines.append(f"  {r['config']:<34} within folds {fmt(r.get('roc_auc_within_folds'))}  "
                                 f"pooled {fmt(r['roc_auc'])} "
                                 f"[{fmt(r.get('roc_auc_ci_low'))}, {fmt(r.get('roc_auc_ci_high'))}]  "
                                 f"wF1 {fmt(r['weighted_f1'])} "
                                 f"[{fmt(r.get('weighted_f1_ci_low'))}, {fmt(r.get('weighted_f1_ci_high'))}]  "
                                 f"recall {fmt(r['recall_all'])}  spec. {fmt(r['specificity'])}{same}")
        for s in self.skipped:
            lines.append(f"skipped {s['name']}: {s['reason']}")
        lines.append(f"report: {self.run_dir / 'report.html'} (and report.md, metrics.csv)")
        return "\n".join(lines)


def ranking_auc(rows: pd.DataFrame) -> pd.Series:
    """The ranking's key: the mean ROC-AUC within the outer folds (threshold-free, and scale-free: it only
    compares cells scored by the same model), or the pooled ROC-AUC where a run has no within-fold figure."""
    within = rows["roc_auc_within_folds"] if "roc_auc_within_folds" in rows else pd.Series(np.nan, index=rows.index)
    return within.where(within.notna(), rows["roc_auc"])


def rank_configs(metrics: pd.DataFrame) -> pd.DataFrame:
    """Pooled subject-disjoint headline rows, best first: ROC-AUC (threshold-free, so no threshold luck;
    the mean within the outer folds, see :func:`ranking_auc`), then weighted F1 at the threshold rule, then name."""
    rows = metrics[(metrics["split"] == SUBJECT_POOLED) & (metrics["headline"])].copy()
    rows["_f1"] = rows["weighted_f1"].fillna(-np.inf)
    rows["_auc"] = ranking_auc(rows).fillna(-np.inf)
    rows = rows.sort_values(["_auc", "_f1", "config"], ascending=[False, False, True], kind="stable")
    return rows.drop(columns=["_f1", "_auc"]).reset_index(drop=True)


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers as the report prints them: fixed ``digits`` decimals, ``n/a`` for missing/NaN."""
    if x is None:
        return "n/a"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if np.isnan(xf):
        return "n/a"
    return f"{xf:.{digits}f}"


def ci_text(row, metric: str) -> str:
    lo, hi = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "n/a"
    return f"{fmt(lo)}–{fmt(hi)}"


def with_ci(row, metric: str) -> str:
    ci = ci_text(row, metric)
    return f"{fmt(row.get(metric))} [{ci}]" if ci != "n/a" else fmt(row.get(metric))


def rule_sentence(run: dict) -> str:
    t = run["threshold"]
    return rule_text(t["rule"], t.get("target_recall"))


def split_sentence(run: dict) -> str:
    d = run["data"]
    if run.get("leaky_split"):  # images without subject: never called subject-disjoint
        return (f"{run['leaky_split']}; {run['n_splits']}-fold CV over {d['n_images']} cells "
                f"({d['n_groups']} split groups)")
    return (f"subject-disjoint {run['n_splits']}-fold cross-validation (StratifiedGroupKFold by subject group), "
            f"pooled out-of-fold over {d['n_images']} cells from {d['n_subjects']} subjects "
            f"({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM)")


def best_sentence(result: CompareResult, markdown: bool = False) -> str:
    """One paragraph naming the best configuration, its split, subjects, cells and 95% interval."""
    row = result.best_row()
    if row is None:
        return "No configuration could be evaluated."
    b = "**" if markdown else ""
    run = result.run
    return (f"Best configuration by ROC-AUC: {b}{result.best}{b}: ROC-AUC {b}{fmt(row['roc_auc'])}{b} "
            f"(95% CI {ci_text(row, 'roc_auc')}; pooled over folds; the mean within the outer folds, which "
            f"ranks the configurations, is {fmt(row.get('roc_auc_within_folds'))}); "
            f"at its threshold: weighted F1 {fmt(row['weighted_f1'])} "
            f"(95% CI {ci_text(row, 'weighted_f1')}), "
            f"ALL recall {fmt(row['recall_all'])} (95% CI {ci_text(row, 'recall_all')}), "
            f"specificity {fmt(row['specificity'])} (95% CI {ci_text(row, 'specificity')}); "
            f"{split_sentence(run)}; decision threshold: {rule_sentence(run)} on calibrated P(ALL), chosen on the "
            f"training folds only. Intervals: {run['n_boot']} bootstrap resamples of subjects.")
