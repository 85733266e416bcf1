"""The comparison report: report.md and a self-contained report.html (figures inlined as base64 PNG).

Both are rendered from one list of blocks, so they always say the same thing. The best configuration,
what its numbers rest on (split, subjects, cells) and its 95% interval come first, then a note on how
to read the numbers; the leaky per-image split appears only in its own, clearly labelled section.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from blastscan.features.store import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from blastscan.pipelines.compare import CompareResult

__all__ = ["fmt", "best_sentence", "report_blocks", "render_markdown", "render_html", "make_figures",
           "write_report"]

SUBJECT_POOLED = "subject_cv_pooled"
SUBJECT_FOLD = "subject_cv_fold"
LEAKY = "leaky_image_cv_pooled"
OFFICIAL = "official_prelim"
LABELS = {"weighted_f1": "weighted F1", "f1_all": "F1 ALL", "f1_hem": "F1 HEM", "recall_all": "ALL recall",
          "specificity": "specificity", "balanced_accuracy": "balanced acc.", "roc_auc": "ROC-AUC",
          "pr_auc": "PR-AUC"}


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


def _ci(row, metric: str) -> str:
    lo, hi = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "n/a"
    return f"{fmt(lo)}–{fmt(hi)}"


def _with_ci(row, metric: str) -> str:
    ci = _ci(row, metric)
    return f"{fmt(row.get(metric))} [{ci}]" if ci != "n/a" else fmt(row.get(metric))


def _rule_text(run: dict) -> str:
    t = run["threshold"]
    if t["rule"] == "recall":
        return f"the highest threshold reaching ALL recall ≥ {t['target_recall']:.2f}"
    return "the threshold with the best weighted F1"


def _split_text(run: dict) -> str:
    d = run["data"]
    return (f"subject-disjoint {run['n_splits']}-fold cross-validation (StratifiedGroupKFold by subject group), "
            f"pooled out-of-fold over {d['n_images']} cells from {d['n_subjects']} subjects "
            f"({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM)")


def best_sentence(result: "CompareResult", markdown: bool = False) -> str:
    """One paragraph naming the best configuration, its split, subjects, cells and 95% interval."""
    row = result.best_row()
    if row is None:
        return "No configuration could be evaluated."
    b = "**" if markdown else ""
    run = result.run
    return (f"Best configuration: {b}{result.best}{b}: weighted F1 {b}{fmt(row['weighted_f1'])}{b} "
            f"(95% CI {_ci(row, 'weighted_f1')}), ROC-AUC {fmt(row['roc_auc'])} (95% CI {_ci(row, 'roc_auc')}), "
            f"ALL recall {fmt(row['recall_all'])}, specificity {fmt(row['specificity'])}; "
            f"{_split_text(run)}; decision threshold: {_rule_text(run)}, chosen on the training folds only. "
            f"Intervals: {run['n_boot']} bootstrap resamples of subjects.")


def _how_to_read(result: "CompareResult") -> list[str]:
    run = result.run
    d = run["data"]
    return [
        f"Every number outside the section marked **leaky** comes from subject-disjoint splits: no subject "
        f"(or subjects linked by identical images) has cells on both sides, so the numbers estimate performance "
        f"on new patients, not on new cells of known patients.",
        f"The data hold only {d['n_subjects']} subjects ({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM), "
        f"and a few subjects contribute most cells: the 95% intervals (bootstrap over subjects) are wide, and "
        f"differences between configurations that lie inside each other's intervals are not evidence that one "
        f"is better.",
        "Pooled out-of-fold metrics are the headline; per-fold numbers vary with which subjects a fold holds.",
        "Weighted F1 is the C-NMC 2019 challenge metric; ALL (leukemic blast) is the positive class, so "
        "ALL recall is the sensitivity and specificity is the fraction of normal (HEM) cells called normal.",
        "blastscan is a research tool, not a medical device: these numbers describe cell classification on "
        "one public dataset and support no clinical decision.",
    ]


# ------------------------------------------------------------------------------------------------
# blocks: ("h1"|"h2"|"p", text) ("ul", [text]) ("table", DataFrame of str) ("fig", key, caption)
def report_blocks(result: "CompareResult") -> list[tuple]:
    """The report's content as renderer-neutral blocks."""
    from blastscan.pipelines.compare import rank_configs

    run = result.run
    m = result.metrics
    blocks: list[tuple] = [("h1", "blastscan comparison report"), ("p", best_sentence(result, markdown=True))]
    blocks += [("h2", "How to read this"), ("ul", _how_to_read(result))]
    if result.notes or result.skipped:
        items = [f"skipped **{s['name']}**: {s['reason']}" for s in result.skipped] + list(result.notes)
        blocks += [("h2", "Notes: what was adapted or skipped"), ("ul", items)]
    if m is None or len(m) == 0:
        return blocks

    ranked = rank_configs(m)
    rank_of = {c: i for i, c in enumerate(ranked["config"])}

    def order_of(config):
        return rank_of.get(config, len(rank_of))

    blocks += [("h2", "Subject-disjoint cross-validation (pooled out-of-fold)"),
               ("p", f"{_split_text(run)}. Threshold: {_rule_text(run)}, chosen inside each training part from "
                     f"grouped out-of-fold predictions of an inner subject-disjoint CV "
                     f"({run.get('threshold_inner_cv', '?')}; never from the test fold); the column gives the median over folds. "
                     f"Brackets: 95% bootstrap interval over subjects. Sorted by weighted F1, then ROC-AUC.")]
    table = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1).astype(str),
        "configuration": ranked["config"],
        "weighted F1": [_with_ci(r, "weighted_f1") for _, r in ranked.iterrows()],
        "F1 ALL": ranked["f1_all"].map(fmt), "F1 HEM": ranked["f1_hem"].map(fmt),
        "ALL recall": [_with_ci(r, "recall_all") for _, r in ranked.iterrows()],
        "specificity": [_with_ci(r, "specificity") for _, r in ranked.iterrows()],
        "balanced acc.": ranked["balanced_accuracy"].map(fmt),
        "ROC-AUC": [_with_ci(r, "roc_auc") for _, r in ranked.iterrows()],
        "PR-AUC": ranked["pr_auc"].map(fmt),
        "threshold": ranked["threshold"].map(fmt),
        "cells / subjects": [f"{int(r['n'])} / {int(r['n_subjects'])}" for _, r in ranked.iterrows()],
    })
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

    folds = m[m["split"] == SUBJECT_FOLD]
    folds = folds.iloc[np.lexsort((folds["fold"].astype(str).to_numpy(),
                                   [order_of(c) for c in folds["config"]]))] if len(folds) else folds
    if len(folds):
        ft = pd.DataFrame({"configuration": folds["config"], "fold": folds["fold"].astype(str),
                           "cells (ALL/HEM)": [f"{int(r['n'])} ({int(r['n_all'])}/{int(r['n_hem'])})"
                                               for _, r in folds.iterrows()],
                           "subjects": folds["n_subjects"].astype(int).astype(str),
                           "threshold": folds["threshold"].map(fmt),
                           "weighted F1": folds["weighted_f1"].map(fmt), "ALL recall": folds["recall_all"].map(fmt),
                           "specificity": folds["specificity"].map(fmt), "ROC-AUC": folds["roc_auc"].map(fmt),
                           "note": folds["note"].fillna("").astype(str)})
        fold_lines = [f"fold {f['fold']}: {f['n_test']} cells ({f['n_test_all']} ALL / {f['n_test_hem']} HEM), "
                      f"subjects {', '.join(f['test_subjects'])}" for f in run.get("folds", [])]
        blocks += [("h2", "Per fold (subject-disjoint)"),
                   ("p", "Each fold's test subjects never appear in its training part. Folds with one class "
                         "have no ROC-AUC (n/a)."), ("ul", fold_lines), ("table", ft)]

    def by_rank(df):
        return df.iloc[np.argsort([order_of(c) for c in df["config"]], kind="stable")]

    off = by_rank(m[m["split"] == OFFICIAL])
    if len(off):
        info = run.get("official_phase") or {}
        ot = pd.DataFrame({"configuration": off["config"],
                           "weighted F1": [_with_ci(r, "weighted_f1") for _, r in off.iterrows()],
                           "ALL recall": off["recall_all"].map(fmt), "specificity": off["specificity"].map(fmt),
                           "ROC-AUC": off["roc_auc"].map(fmt), "threshold": off["threshold"].map(fmt),
                           "cells / subjects": [f"{int(r['n'])} / {int(r['n_subjects'])}" for _, r in off.iterrows()]})
        blocks += [("h2", "Official phase: training folds → preliminary test"),
                   ("p", f"Trained on the {info.get('n_train', '?')} cells of the dataset's training folds, tested on "
                         f"its {info.get('n_test', '?')} preliminary-test cells (subjects "
                         f"{', '.join(info.get('test_subjects', []))}); threshold from an inner subject-disjoint CV "
                         f"on the training folds. With this few test subjects these numbers are very uncertain."),
                   ("table", ot)]

    leaky = m[m["split"] == LEAKY]
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

    alt = by_rank(m[(m["split"] == SUBJECT_POOLED) & (~m["headline"].astype(bool))])
    if len(alt):
        rule = alt["threshold_rule"].iloc[0]
        at = pd.DataFrame({"configuration": alt["config"], "threshold (median)": alt["threshold"].map(fmt),
                           "weighted F1": alt["weighted_f1"].map(fmt), "ALL recall": alt["recall_all"].map(fmt),
                           "specificity": alt["specificity"].map(fmt)})
        what = "best weighted F1" if rule == "f1" else f"ALL recall ≥ {run['threshold']['target_recall']:.2f}"
        blocks += [("h2", f"Other threshold rule: {what}"),
                   ("p", "The same out-of-fold predictions thresholded by the other rule (also chosen on training "
                         "folds only), for reference; not used for the ranking."), ("table", at)]

    ps = result.per_subject
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

    blocks += [("h2", "Run details"), ("ul", _details(result))]
    return blocks


def _leaky_note() -> str:
    from blastscan.pipelines.evaluate import LEAKY_NOTE

    return LEAKY_NOTE[0].upper() + LEAKY_NOTE[1:]


def _details(result: "CompareResult") -> list[str]:
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
        ids = ", ".join(e.get("identity", e.get("name", "?")) for e in info.get("extractors", []))
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
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def make_figures(result: "CompareResult") -> dict[str, bytes]:
    """PNG bytes of each figure: ``roc``, ``confusion``, ``metrics``, ``subjects``, ``leaky``."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    from blastscan.pipelines.compare import rank_configs

    m = result.metrics
    if m is None or len(m) == 0:
        return {}
    figs: dict[str, bytes] = {}
    ranked = rank_configs(m)
    preds = result.predictions
    cv = preds[preds["split"] == "subject_cv"]

    # ROC curves, one panel per feature set
    fsets = list(dict.fromkeys(ranked["feature_set"]))
    ncol = min(len(fsets), 4)
    nrow = int(np.ceil(len(fsets) / ncol))
    fig = Figure(figsize=(3.6 * ncol, 3.4 * nrow))
    for k, fs in enumerate(fsets):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        for _, r in ranked[ranked["feature_set"] == fs].iterrows():
            sel = cv[cv["config"] == r["config"]]
            yt = (sel["label"] == "all").astype(int).to_numpy()
            if len(np.unique(yt)) < 2:
                continue
            fpr, tpr, _ = roc_curve(yt, sel["p_all"].to_numpy())
            ax.plot(fpr, tpr, lw=1.4, label=f"{r['classifier']} ({fmt(r['roc_auc'], 2)})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set_title(fs, fontsize=9)
        ax.set_xlabel("1 - specificity (HEM called ALL)", fontsize=8)
        ax.set_ylabel("ALL recall", fontsize=8)
        ax.legend(fontsize=7, loc="lower right", title="ROC-AUC", title_fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    figs["roc"] = _png(fig)

    # confusion matrices of the best configurations
    top = ranked.head(3)
    fig = Figure(figsize=(3.2 * len(top), 3.0))
    for k, (_, r) in enumerate(top.iterrows()):
        ax = fig.add_subplot(1, len(top), k + 1)
        mat = np.array([[r["tp"], r["fn"]], [r["fp"], r["tn"]]], dtype=float)
        norm = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(mat[i, j])}\n({norm[i, j]:.0%})", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["called ALL", "called HEM"], fontsize=7)
        ax.set_yticks([0, 1], ["ALL", "HEM"], fontsize=7)
        ax.set_title(r["config"], fontsize=8)
    fig.tight_layout()
    figs["confusion"] = _png(fig)

    # main metrics with CIs
    keys = ["weighted_f1", "recall_all", "specificity", "roc_auc"]
    names = list(ranked["config"])[::-1]
    fig = Figure(figsize=(3.0 * len(keys), 0.8 + 0.28 * len(names)))
    for k, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), k + 1)
        rows = ranked.set_index("config").loc[names]
        vals = rows[key].to_numpy(dtype=float)
        lo = rows.get(f"{key}_ci_low", pd.Series(np.nan, index=rows.index)).to_numpy(dtype=float)
        hi = rows.get(f"{key}_ci_high", pd.Series(np.nan, index=rows.index)).to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)]).clip(min=0)
        ax.barh(np.arange(len(names)), np.nan_to_num(vals), xerr=err, color="#4c78a8", ecolor="#333", capsize=2)
        ax.set_xlim(0, 1)
        ax.set_title(LABELS[key], fontsize=9)
        ax.set_yticks(np.arange(len(names)), names if k == 0 else [""] * len(names), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    figs["metrics"] = _png(fig)

    # per-subject accuracy of the best configuration
    ps = result.per_subject
    if ps is not None and len(ps) and result.best is not None:
        b = ps[ps["config"] == result.best].sort_values(["label", "accuracy"])
        fig = Figure(figsize=(max(5, 0.22 * len(b) + 1.5), 3.2))
        ax = fig.add_subplot(1, 1, 1)
        colors = np.where(b["label"] == "all", "#d62728", "#1f77b4")
        ax.bar(np.arange(len(b)), b["accuracy"], color=colors)
        ax.set_xticks(np.arange(len(b)), [f"{s} ({n})" for s, n in zip(b["subject"], b["n_cells"])], rotation=90,
                      fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of cells called right", fontsize=8)
        ax.set_title(f"{result.best}: per-subject accuracy (red ALL, blue HEM; cells in brackets)", fontsize=9)
        fig.tight_layout()
        figs["subjects"] = _png(fig)

    # leaky vs subject-disjoint
    leaky = m[m["split"] == LEAKY].set_index("config")
    if len(leaky):
        names = [c for c in ranked["config"] if c in leaky.index][::-1]
        subj = ranked.set_index("config")
        fig = Figure(figsize=(8, 1.4 + 0.32 * len(names)))
        for k, key in enumerate(["weighted_f1", "roc_auc"]):
            ax = fig.add_subplot(1, 2, k + 1)
            yy = np.arange(len(names))
            a = subj.loc[names, key].to_numpy(dtype=float)
            lk = leaky.loc[names, key].to_numpy(dtype=float)
            ax.hlines(yy, a, lk, color="#bbb")
            ax.plot(a, yy, "o", color="#1f77b4", label="subject-disjoint")
            ax.plot(lk, yy, "s", color="#d62728", label="LEAKY per-image split")
            ax.set_yticks(yy, names if k == 0 else [""] * len(names), fontsize=7)
            ax.set_title(LABELS[key], fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.suptitle("Leaky per-image split vs subject-disjoint (leaky: do not trust)", fontsize=9)
        fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
        figs["leaky"] = _png(fig)
    return figs


def write_report(result: "CompareResult") -> tuple:
    """Write ``report.md`` and ``report.html`` into ``result.run_dir`` (atomically); return their paths."""
    blocks = report_blocks(result)
    md_path = result.run_dir / "report.md"
    html_path = result.run_dir / "report.html"
    atomic_write_bytes(md_path, render_markdown(blocks).encode())
    atomic_write_bytes(html_path, render_html(blocks, make_figures(result)).encode())
    return md_path, html_path
