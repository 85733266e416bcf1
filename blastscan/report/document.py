"""The comparison report: report.md and a self-contained report.html (figures inlined as base64 PNG).

Both are rendered from one list of blocks, so they always say the same thing. The best configuration,
what its numbers rest on (split, subjects, cells) and its 95% interval come first, then a note on how
to read the numbers; the leaky per-image split appears only in its own, clearly labelled section.
"""

from __future__ import annotations

import base64
import html
import re

import numpy as np
import pandas as pd

from blastscan._io import atomic_write_bytes
from blastscan.evaluation.decision import OPERATING_TARGETS, SPREAD_BOUND
from blastscan.report.figures import make_figures
from blastscan.report.results import (LEAKY, LEAKY_NOTE, OFFICIAL, OPERATING, SUBJECT_FOLD, SUBJECT_POOLED,
                                         WITHIN_SUBJECT,
                                         CompareResult,
                                         best_sentence, fmt, rank_configs, rule_sentence, split_sentence,
                                         with_ci)

__all__ = ["fmt", "best_sentence", "report_blocks", "render_markdown", "render_html", "make_figures",
           "write_report"]



def _how_to_read(result: CompareResult) -> list[str]:
    run = result.run
    d = run["data"]
    if run.get("leaky_split"):
        first = (f"**{run['leaky_split']}.** Cells of one patient can be on both sides of a split, so every "
                 "number below overstates what a model would do on a patient it has not seen.")
    else:
        first = ("Every number outside the section marked **leaky** comes from subject-disjoint splits: no subject "
        "(or subjects linked by identical images) has cells on both sides, so the numbers estimate performance "
        "on new patients, not on new cells of known patients.")
    return [
        first,
        f"The data hold only {d['n_subjects']} subjects ({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM), "
        f"and a few subjects contribute most cells: the 95% intervals (bootstrap over subjects) are wide, and "
        f"differences between configurations that lie inside each other's intervals are not evidence that one "
        f"is better.",
        "Configurations are ranked by the mean ROC-AUC within the outer folds (each fold's held-out cells scored by one "
        "model); the other metrics are pooled out-of-fold; per-fold numbers vary with which subjects a fold holds.",
        "Weighted F1 is the C-NMC 2019 challenge metric; ALL (leukemic blast) is the positive class, so "
        "ALL recall is the sensitivity and specificity is the fraction of normal (HEM) cells called normal.",
        "blastscan is a research tool, not a medical device: these numbers describe cell classification on "
        "one public dataset and support no clinical decision.",
    ]


# ------------------------------------------------------------------------------------------------
# blocks: ("h1"|"h2"|"p", text) ("ul", [text]) ("table", DataFrame of str) ("fig", key, caption)
def report_blocks(result: CompareResult) -> list[tuple]:
    """The report's content as renderer-neutral blocks."""
    m = result.metrics
    blocks: list[tuple] = [("h1", "blastscan comparison report"), ("p", best_sentence(result, markdown=True))]
    blocks += [("h2", "How to read this"), ("ul", _how_to_read(result))]
    if result.notes or result.skipped:
        items = [f"skipped **{s['name']}**: {s['reason']}" for s in result.skipped] + list(result.notes)
        blocks += [("h2", "Notes: what was adapted or skipped"), ("ul", items)]
    if m is None or len(m) == 0:
        return blocks

    ranked = rank_configs(m)
    order = _Order(ranked)
    for section in (_ranking_blocks, _operating_blocks, _calibration_blocks, _patient_blocks, _fold_blocks, _official_blocks, _within_blocks, _leaky_blocks,
                    _other_rule_blocks, _subject_blocks, _screening_blocks):
        blocks += section(result, ranked, order)
    blocks += [("h2", "Run details"), ("ul", _details(result))]
    return blocks


class _Order:
    """Rows of any split in the order of the headline ranking."""

    def __init__(self, ranked: pd.DataFrame):
        self.rank_of = {c: i for i, c in enumerate(ranked["config"])}

    def of(self, config) -> int:
        return self.rank_of.get(config, len(self.rank_of))

    def sort(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.iloc[np.argsort([self.of(c) for c in df["config"]], kind="stable")]


def _ranking_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    run = result.run
    blocks = [("h2", "Subject-disjoint cross-validation (pooled out-of-fold)"),
               ("p", f"{split_sentence(run)}. Threshold: {rule_sentence(run)}, chosen inside each training part from "
                     f"grouped out-of-fold predictions of an inner subject-disjoint CV "
                     f"({run.get('threshold_inner_cv', '?')}; never from the test fold); the column gives the median over folds. "
                     f"Brackets: 95% bootstrap interval over subjects. **Ranked by ROC-AUC within folds**: the "
                     f"mean over the outer folds of the ROC-AUC among each fold's held-out cells (threshold-free: "
                     f"how well one model's P(ALL) orders cells of unseen subjects; and scale-free: pooling five "
                     f"models' scores, as the pooled ROC-AUC beside it does, can raise or lower a figure without any "
                     f"model ranking its cells better), then weighted F1; the other columns are at "
                     f"the threshold rule, on calibrated P(ALL); threshold spread = max - min over outer folds.")]
    table = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1).astype(str),
        "configuration": ranked["config"],
        "ROC-AUC within folds": ranked.get("roc_auc_within_folds", pd.Series(np.nan, index=ranked.index)).map(fmt),
        "ROC-AUC": [with_ci(r, "roc_auc") for _, r in ranked.iterrows()],
        "weighted F1": [with_ci(r, "weighted_f1") for _, r in ranked.iterrows()],
        "F1 ALL": ranked["f1_all"].map(fmt), "F1 HEM": ranked["f1_hem"].map(fmt),
        "ALL recall": [with_ci(r, "recall_all") for _, r in ranked.iterrows()],
        "specificity": [with_ci(r, "specificity") for _, r in ranked.iterrows()],
        "balanced acc.": ranked["balanced_accuracy"].map(fmt),
        "PR-AUC": ranked["pr_auc"].map(fmt),
        "threshold (spread)": [f"{fmt(r['threshold'])} ({fmt(r.get('threshold_spread'))})"
                               for _, r in ranked.iterrows()],
        "cells / subjects": [f"{int(r['n'])} / {int(r['n_subjects'])}" for _, r in ranked.iterrows()],
    })
    same = [f"**{r['config']}** also stands for {r['same_as']} (the same model: run once, one row)"
            for _, r in ranked.iterrows() if isinstance(r.get("same_as"), str) and r["same_as"]]
    if same:
        blocks.append(("ul", same))
    unstable = [f"**{r['config']}**: per-fold thresholds spread {fmt(r['threshold_spread'])} (max - min over "
                f"outer folds, calibrated P(ALL)), more than {SPREAD_BOUND:.2f}: its threshold depends on which "
                f"subjects chose it" for _, r in ranked.iterrows()
                if pd.notna(r.get("threshold_spread")) and r["threshold_spread"] > SPREAD_BOUND]
    if unstable:
        blocks += [("p", "**Unstable thresholds.** The threshold procedure gave widely different thresholds across "
                         "outer folds for:"), ("ul", unstable)]
    blocks += [("table", table), ("fig", "metrics", "Main metrics with 95% bootstrap intervals (subject-disjoint)"),
               ("fig", "roc", "ROC curves per feature set (pooled out-of-fold, subject-disjoint)")]

    top = ranked.head(3)
    cm = pd.DataFrame({"configuration": top["config"],
                       "ALL called ALL (TP)": top["tp"].astype(int).astype(str),
                       "ALL called HEM (FN)": top["fn"].astype(int).astype(str),
                       "HEM called ALL (FP)": top["fp"].astype(int).astype(str),
                       "HEM called HEM (TN)": top["tn"].astype(int).astype(str)})
    blocks += [("h2", "Confusion matrices of the best configurations"), ("table", cm),
               ("fig", "confusion", "Confusion matrices (pooled out-of-fold, subject-disjoint)")]
    return blocks


def _operating_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m, run = result.metrics, result.run
    op = m[m["split"] == OPERATING] if "split" in m else m.iloc[:0]
    if not len(op):
        return []
    top = list(ranked["config"].head(5))
    op = op[op["config"].isin(top)]
    op = op.iloc[np.lexsort((op["target_recall"].to_numpy(), [order.of(c) for c in op["config"]]))]
    shipped = float(run["threshold"]["target_recall"]) if run["threshold"]["rule"] == "recall" else None
    table = pd.DataFrame({
        "configuration": op["config"],
        "target ALL recall": [f"{t:.2f}" + (" (shipped)" if shipped is not None and abs(t - shipped) < 1e-9 else "")
                              for t in op["target_recall"]],
        "ALL recall on held-out subjects": [with_ci(r, "recall_all") for _, r in op.iterrows()],
        "specificity on held-out subjects": [with_ci(r, "specificity") for _, r in op.iterrows()],
        "weighted F1": [with_ci(r, "weighted_f1") for _, r in op.iterrows()],
        "threshold (median, spread)": [f"{fmt(r['threshold'])} ({fmt(r.get('threshold_spread'))})"
                                       for _, r in op.iterrows()],
    })
    return [("h2", "Operating points: target ALL recall " + " / ".join(f"{t:.2f}" for t in OPERATING_TARGETS)),
            ("p", "Per outer fold, the threshold reaching the target ALL recall on the training part's inner "
                  "out-of-fold (calibrated) P(ALL) is applied to that fold's held-out subjects; pooled over folds. "
                  "A target is met on the training folds by construction; what it gives on new patients is the "
                  "recall column (often below the target). `--target-recall` picks the one that ships (`compare`, "
                  "`train`, `export`). Top 5 configurations by ROC-AUC; every configuration's rows are in "
                  f"metrics.csv (split `{OPERATING}`). Brackets: 95% bootstrap interval over subjects."),
            ("table", table)]


def _calibration_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    if "brier" not in ranked:
        return []
    table = pd.DataFrame({"configuration": ranked["config"],
                          "Brier calibrated": ranked["brier"].map(fmt),
                          "Brier raw": ranked["brier_raw"].map(fmt),
                          "ROC-AUC calibrated (pooled)": ranked["roc_auc"].map(fmt),
                          "ROC-AUC raw": ranked.get("roc_auc_raw", pd.Series(np.nan, index=ranked.index)).map(fmt),
                          "ROC-AUC within folds (mean; ranked)": ranked.get("roc_auc_within_folds",
                                                                    pd.Series(np.nan, index=ranked.index)).map(fmt)})
    return [("h2", "Calibration of P(ALL)"),
            ("p", "Each outer fold's P(ALL) goes through a calibration map (Platt's sigmoid on the log-odds of the "
                  "model's P(ALL): two numbers) fitted on the training part's inner subject-disjoint out-of-fold "
                  "P(ALL), never on the test fold; a bundle stores the map fitted the same way on all its training "
                  "subjects and `score` applies it. Brier score: mean squared difference between P(ALL) and the "
                  "label, pooled out-of-fold (lower is better). The map never reverses the model's order, so it "
                  "changes no call at a threshold rule; it makes P(ALL) = 0.8 mean about 80% ALL among such cells, "
                  "on subjects like the training ones. Every subject weighs the same in the map's fit. Within one "
                  "fold the map leaves ROC-AUC unchanged; pooled over folds it puts the five models' scores on one "
                  "scale, which is why the pooled ROC-AUC of calibrated P(ALL) differs from that of "
                  "the raw scores, shown beside it. The mean of the ROC-AUC within each fold compares only cells "
                  "scored by the same model, so no map or per-fold scale moves it: when it stays well below the "
                  "pooled figures, part of their height is the pooling, not the ranking of cells. (Subject weighting was adopted after a cell-weighted map, on "
                  "the C-NMC dev data, followed its two large healthy subjects; see the README.)"),
            ("table", table),
            ("fig", "reliability", f"Reliability of {result.best}: observed share of ALL per bin of P(ALL), "
                                   "calibrated vs raw (pooled out-of-fold, subject-disjoint)")]


def _patient_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    if "subject_roc_auc" not in ranked:
        return []
    table = pd.DataFrame({
        "configuration": ranked["config"],
        "subject ROC-AUC": [with_ci(r, "subject_roc_auc") for _, r in ranked.iterrows()],
        "subjects called right": [with_ci(r, "subject_call_accuracy") for _, r in ranked.iterrows()],
        "subjects (ALL / HEM)": [f"{int(r['n_subject_all'])} / {int(r['n_subject_hem'])}" for _, r in ranked.iterrows()],
        "cell-level weighted F1": ranked["weighted_f1"].map(fmt),
    })
    return [("h2", "Patient level (subject-disjoint)"),
            ("p", "Per subject: the mean P(ALL) of its cells and the share of its cells called ALL, each cell "
                  "predicted by the model of the fold that held its subject out. Subject ROC-AUC ranks subjects by "
                  "mean P(ALL); a subject is called ALL when at least half its cells are. Brackets: 95% bootstrap "
                  "interval over subjects. **Every C-NMC subject is one class**, so these numbers measure how well "
                  "the model separates patients, not how well it counts blasts in a mixed smear; and most HEM "
                  "subjects have only a few cells."), ("table", table)]


def _within_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m = result.metrics
    ws = order.sort(m[m["split"] == WITHIN_SUBJECT]) if "split" in m else m.iloc[:0]
    if not len(ws):
        return []
    table = pd.DataFrame({"configuration": ws["config"],
                          "weighted F1": [with_ci(r, "weighted_f1") for _, r in ws.iterrows()],
                          "ROC-AUC": [with_ci(r, "roc_auc") for _, r in ws.iterrows()],
                          "ALL recall": ws["recall_all"].map(fmt), "specificity": ws["specificity"].map(fmt)})
    return [("h2", "Within-subject scoring (uses other cells of the same patient — not the headline)"),
            ("p", "Each cell's P(ALL) averaged half-and-half with the mean P(ALL) of its subject's cells (as the "
                  "challenge winner corrected a cell by similar test cells): it uses other cells of the same "
                  "patient, so it only applies when a patient's cells are scored together (`blastscan score "
                  "--within-subject`), and on this data it mostly turns a few large subjects into single "
                  "decisions. Thresholds are chosen the same way on each training part."), ("table", table)]


def _screening_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    if not result.screening:
        return []
    fs = "handcrafted" if "handcrafted" in result.screening else next(iter(result.screening))
    t = result.screening[fs]
    n_flag = int(t["flag"].sum())
    top = t.head(25)
    table = pd.DataFrame({"feature": top["feature"], "AUC cells": top["auc_cells"].map(fmt),
                          "AUC cells (subjects weighted alike)": top["auc_cells_weighted"].map(fmt),
                          "AUC per-subject means": top["auc_subjects"].map(fmt),
                          "flag": np.where(top["flag"], "subject?", "") + np.where(top["flipped"], " flips", "")})
    others = ", ".join(f for f in result.screening if f != fs)
    return [("h2", f"Feature screening: {fs}"),
            ("p", f"Per feature, ROC-AUC over cells and over per-subject means ({int(t['n_subjects_all'].iloc[0])} ALL, "
                  f"{int(t['n_subjects_hem'].iloc[0])} HEM subjects), strongest at subject level first. "
                  f"**{n_flag} of {len(t)}** features are flagged: a cell-level signal that does not survive at "
                  "subject level (weaker or reversed), i.e. probably the subject's stain rather than the cell. "
                  "Every row of every screened set is in screening.csv" + (f" (also: {others})." if others else ".")),
            ("table", table)]


def _fold_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m, run = result.metrics, result.run
    folds = m[m["split"] == SUBJECT_FOLD]
    folds = folds.iloc[np.lexsort((folds["fold"].astype(str).to_numpy(),
                                   [order.of(c) for c in folds["config"]]))] if len(folds) else folds
    blocks = []
    if len(folds):
        ft = pd.DataFrame({"configuration": folds["config"], "fold": folds["fold"].astype(str),
                           "cells (ALL/HEM)": [f"{int(r['n'])} ({int(r['n_all'])}/{int(r['n_hem'])})"
                                               for _, r in folds.iterrows()],
                           "subjects": folds["n_subjects"].astype(int).astype(str),
                           "threshold": folds["threshold"].map(fmt),
                           "weighted F1": folds["weighted_f1"].map(fmt),
                           "ALL recall (target)": [f"{fmt(r['recall_all'])} ({fmt(r.get('target_recall'), 2)})"
                                                   for _, r in folds.iterrows()],
                           "specificity": folds["specificity"].map(fmt), "ROC-AUC": folds["roc_auc"].map(fmt),
                           "note": folds["note"].fillna("").astype(str)})
        fold_lines = [f"fold {f['fold']}: {f['n_test']} cells ({f['n_test_all']} ALL / {f['n_test_hem']} HEM), "
                      f"subjects {', '.join(f['test_subjects'])}" for f in run.get("folds", [])]
        blocks += [("h2", "Per fold (subject-disjoint)"),
                   ("p", "Each fold's test subjects never appear in its training part. Folds with one class "
                         "have no ROC-AUC (n/a)."), ("ul", fold_lines), ("table", ft)]
    return blocks


def _official_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m, run = result.metrics, result.run
    off = order.sort(m[m["split"] == OFFICIAL])
    blocks = []
    if len(off):
        info = run.get("official_phase") or {}
        ot = pd.DataFrame({"configuration": off["config"],
                           "weighted F1": [with_ci(r, "weighted_f1") for _, r in off.iterrows()],
                           "ALL recall": off["recall_all"].map(fmt), "specificity": off["specificity"].map(fmt),
                           "ROC-AUC": off["roc_auc"].map(fmt), "threshold": off["threshold"].map(fmt),
                           "cells / subjects": [f"{int(r['n'])} / {int(r['n_subjects'])}" for _, r in off.iterrows()]})
        blocks += [("h2", "Official phase: training folds → preliminary test"),
                   ("p", f"Trained on the {info.get('n_train', '?')} cells of the dataset's training folds, tested on "
                         f"its {info.get('n_test', '?')} preliminary-test cells (subjects "
                         f"{', '.join(info.get('test_subjects', []))}); threshold from an inner subject-disjoint CV "
                         f"on the training folds. With this few test subjects these numbers are very uncertain."),
                   ("table", ot)]
    return blocks


def _leaky_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m, run = result.metrics, result.run
    leaky = m[m["split"] == LEAKY]
    blocks = []
    if len(leaky):
        subj = ranked.set_index("config")
        lk = leaky.set_index("config")
        names = [c for c in ranked["config"] if c in lk.index]
        lt = pd.DataFrame({
            "configuration": names,
            "weighted F1 subject-disjoint": [fmt(subj.loc[c, "weighted_f1"]) for c in names],
            "weighted F1 LEAKY": [fmt(lk.loc[c, "weighted_f1"]) for c in names],
            "ROC-AUC subject-disjoint": [fmt(subj.loc[c, "roc_auc"]) for c in names],
            "ROC-AUC LEAKY": [fmt(lk.loc[c, "roc_auc"]) for c in names],
            "inflation (weighted F1)": [fmt(lk.loc[c, "weighted_f1"] - subj.loc[c, "weighted_f1"]) for c in names],
        })
        blocks += [("h2", "Leaky per-image split (for comparison only — do not trust)"),
                   ("p", f"**{_leaky_note()}.** What a per-image random split ({run['leaky_splits']}-fold "
                         f"StratifiedKFold ignoring subjects) would have claimed. Cells of one patient resemble each "
                         f"other, so a model tested on cells of patients it was trained on looks better than it is "
                         f"on a new patient. Same models, same threshold rule (median of the subject-disjoint "
                         f"folds' thresholds): only the split differs."),
                   ("table", lt), ("fig", "leaky", "Subject-disjoint vs leaky per-image split")]
    return blocks


def _other_rule_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    m, run = result.metrics, result.run
    alt = order.sort(m[(m["split"] == SUBJECT_POOLED) & (~m["headline"].astype(bool))])
    blocks = []
    if len(alt):
        rule = alt["threshold_rule"].iloc[0]
        at = pd.DataFrame({"configuration": alt["config"], "threshold (median)": alt["threshold"].map(fmt),
                           "weighted F1": alt["weighted_f1"].map(fmt), "ALL recall": alt["recall_all"].map(fmt),
                           "specificity": alt["specificity"].map(fmt)})
        what = "best weighted F1" if rule == "f1" else f"ALL recall ≥ {run['threshold']['target_recall']:.2f}"
        blocks += [("h2", f"Other threshold rule: {what}"),
                   ("p", "The same out-of-fold predictions thresholded by the other rule (also chosen on training "
                         "folds only), for reference; not used for the ranking."), ("table", at)]
    return blocks


def _subject_blocks(result: CompareResult, ranked: pd.DataFrame, order: _Order) -> list[tuple]:
    ps = result.per_subject
    blocks = []
    if ps is not None and len(ps) and result.best is not None:
        best_ps = ps[ps["config"] == result.best]
        pt = pd.DataFrame({"subject": best_ps["subject"], "group": best_ps["group"], "class": best_ps["label"],
                           "cells": best_ps["n_cells"].astype(int).astype(str),
                           "called right": best_ps["n_correct"].astype(int).astype(str),
                           "accuracy": best_ps["accuracy"].map(fmt), "mean P(ALL)": best_ps["mean_p_all"].map(fmt)})
        blocks += [("h2", f"Per-subject accuracy of {result.best}"),
                   ("p", "Every subject has one class, so a subject's accuracy is the fraction of its cells called "
                         "right (each cell by the model of the fold that held its subject out)."),
                   ("fig", "subjects", f"Per-subject accuracy of {result.best}"), ("table", pt)]
    return blocks


def _leaky_note() -> str:
    return LEAKY_NOTE[0].upper() + LEAKY_NOTE[1:]


def _details(result: CompareResult) -> list[str]:
    run = result.run
    d = run["data"]
    items = [
        f"dataset: {run.get('dataset')}; store: {run.get('store')}; manifest: {run.get('manifest')} "
        f"(sha256 of its labelled content: {d['manifest_sha256'][:16]}…)",
        f"cells: {d['n_images']} ({d['n_all']} ALL, {d['n_hem']} HEM); subjects: {d['n_subjects']}; "
        f"split groups: {d['n_groups']}",
        f"seed {run['seed']}; folds {run['n_splits']} (requested {run['n_splits_requested']}); inner threshold "
        f"CV {run.get('threshold_inner_cv')}; leaky folds {run['leaky_splits']}; bootstrap resamples "
        f"{run['n_boot']}; {run.get('fits_per_config')} model fits per configuration",
    ]
    for fs, info in run.get("feature_sets", {}).items():
        ids = ", ".join(e.get("identity", e.get("name", "?"))
                        + (f" [{e['precision']} on {e['engine']}]" if e.get("engine") else "")
                        for e in info.get("extractors", []))
        items.append(f"feature set {fs}: {info['n_features']} features ({ids})")
    items.append("versions: " + ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items() if v))
    items.append(f"code: blastscan {run.get('blastscan_version')}, git {run.get('git_revision') or 'n/a'}")
    items.append(f"started {run.get('started')}, finished {run.get('finished')}, "
                 f"{run.get('seconds', {}).get('total', '?')} s with {run.get('jobs')} parallel jobs")
    return items


# ------------------------------------------------------------------------------------------------
# renderers
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple]) -> str:
    """Blocks -> Markdown (figures are left to the HTML report)."""
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {i}" for i in b[1]) + "\n")
        elif kind == "table":
            df = b[1]
            lines = ["| " + " | ".join(_md_cell(c) for c in df.columns) + " |",
                     "|" + "|".join("---" for _ in df.columns) + "|"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.astype(str).itertuples(index=False)]
            out.append("\n".join(lines) + "\n")
    out.append("_Figures: see report.html._\n")
    return "\n".join(out)


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(text), quote=False))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}p:first-of-type{font-size:1.05em;background:#eef5ff;padding:.7em;border-radius:4px}
"""


def render_html(blocks: list[tuple], figures: dict[str, bytes]) -> str:
    """Blocks -> one self-contained HTML page (figures as base64 PNG data URIs)."""
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           "<title>blastscan comparison report</title>", f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"<h1>{_inline(b[1])}</h1>")
        elif kind == "h2":
            out.append(f"<h2>{_inline(b[1])}</h2>")
        elif kind == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            df = b[1]
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                           for row in df.astype(str).itertuples(index=False))
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "fig":
            png = figures.get(b[1])
            if png:
                data = base64.b64encode(png).decode()
                out.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# figures (matplotlib's object API with the Agg canvas: no pyplot state, no display needed)
def write_report(result: CompareResult) -> tuple:
    """Write ``report.md`` and ``report.html`` into ``result.run_dir`` (atomically); return their paths."""
    blocks = report_blocks(result)
    md_path = result.run_dir / "report.md"
    html_path = result.run_dir / "report.html"
    atomic_write_bytes(md_path, render_markdown(blocks).encode())
    atomic_write_bytes(html_path, render_html(blocks, make_figures(result)).encode())
    return md_path, html_path
