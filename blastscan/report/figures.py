"""The comparison report's figures (matplotlib, rendered to PNG bytes for inlining): ROC curves, confusion
matrices, metrics with intervals, per-subject accuracy, and the leaky split beside the honest one."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from blastscan.evaluation.calibration import brier_score, reliability_table
from blastscan.report.results import LEAKY, CompareResult, fmt, rank_configs

__all__ = ["LABELS", "make_figures"]

LABELS = {"weighted_f1": "weighted F1", "f1_all": "F1 ALL", "f1_hem": "F1 HEM", "recall_all": "ALL recall",
          "specificity": "specificity", "balanced_accuracy": "balanced acc.", "roc_auc": "ROC-AUC",
          "pr_auc": "PR-AUC"}


def _png(fig) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def make_figures(result: CompareResult) -> dict[str, bytes]:
    """PNG bytes of each figure: ``roc``, ``confusion``, ``metrics``, ``subjects``, ``leaky``."""
    m = result.metrics
    if m is None or len(m) == 0:
        return {}
    ranked = rank_configs(m)
    preds = result.predictions
    cv = preds[preds["split"] == "subject_cv"]
    figs = {"roc": _roc(ranked, cv), "confusion": _confusion(ranked), "metrics": _metrics(ranked)}
    rel = _reliability(cv[cv["config"] == result.best]) if result.best is not None else None
    if rel is not None:
        figs["reliability"] = rel
    subjects = _subjects(result)
    if subjects is not None:
        figs["subjects"] = subjects
    leaky = _leaky(m, ranked)
    if leaky is not None:
        figs["leaky"] = leaky
    return figs


def _reliability(sel) -> bytes | None:
    """Observed share of ALL per bin of P(ALL), calibrated and raw, against the diagonal."""
    if not len(sel) or "p_all_raw" not in sel:
        return None
    y = (sel["label"] == "all").astype(int).to_numpy()
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect calibration")
    for col, name, style in (("p_all", "calibrated", "-o"), ("p_all_raw", "raw", "-s")):
        p = sel[col].to_numpy(dtype=float)
        t = reliability_table(y, p)
        ax.plot(t["mean_p_all"], t["share_all"], style, ms=4, label=f"{name} (Brier {brier_score(y, p):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("P(ALL), mean per bin of 0.1")
    ax.set_ylabel("share of ALL cells in the bin")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def _roc(ranked, cv) -> bytes:
    """ROC curves, one panel per feature set."""
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
    return _png(fig)


def _confusion(ranked) -> bytes:
    """Confusion matrices of the best configurations."""
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
    return _png(fig)


def _metrics(ranked) -> bytes:
    """Main metrics with their intervals."""
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
    return _png(fig)


def _subjects(result: CompareResult) -> bytes | None:
    """Per-subject accuracy of the best configuration."""
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
        return _png(fig)
    return None


def _leaky(m, ranked) -> bytes | None:
    """The leaky per-image split beside the subject-disjoint one."""
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
        return _png(fig)



    return None
