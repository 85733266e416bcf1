"""Patient-level results: per-subject mean P(ALL) and blast fraction, how well those separate subjects,
the opt-in within-subject scoring, and a subject's blast fraction corrected for the model's errors.

Every C-NMC subject is one class, so on this data subject-level numbers measure separating patients, not
counting blasts in a mixed smear; reports say so beside them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from blastscan.evaluation.splits import as_labels

__all__ = ["WITHIN_SUBJECT_WEIGHT", "subject_means", "patient_metrics", "within_subject", "blast_fraction"]

#: Weight of a cell's own P(ALL) in within-subject scoring (the rest: the mean over its subject's cells).
WITHIN_SUBJECT_WEIGHT = 0.5


def subject_means(subjects, y, p_all, threshold) -> pd.DataFrame:
    """Per subject: ``label`` (majority), ``n_cells``, ``mean_p_all`` and ``fraction_called_all`` (cells with
    ``p_all >= threshold``; ``threshold`` may be per cell)."""
    y = as_labels(y)
    p = np.asarray(p_all, dtype=float)
    called = (p >= np.broadcast_to(np.asarray(threshold, dtype=float), p.shape)).astype(float)
    df = pd.DataFrame({"subject": np.asarray(subjects).astype(str), "y": y, "p": p, "called": called})
    out = df.groupby("subject", sort=True).agg(y=("y", "mean"), n_cells=("y", "size"), mean_p_all=("p", "mean"),
                                               fraction_called_all=("called", "mean"))
    out["label"] = np.where(out["y"] >= 0.5, "all", "hem")
    return out.reset_index()[["subject", "label", "n_cells", "mean_p_all", "fraction_called_all"]]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def patient_metrics(subjects, y, p_all, threshold, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict[str, float]:
    """How well per-subject summaries separate ALL from HEM subjects.

    ``subject_roc_auc``: ROC-AUC of each subject's mean P(ALL) against its class; ``subject_call_accuracy``:
    share of subjects called right when a subject is called ALL if at least half its cells are; with
    ``_ci_low``/``_ci_high`` from resampling subjects (separately per class), and ``n_subjects``.
    """
    t = subject_means(subjects, y, p_all, threshold)
    ys = (t["label"] == "all").to_numpy().astype(int)
    mean_p = t["mean_p_all"].to_numpy()
    call = (t["fraction_called_all"].to_numpy() >= 0.5).astype(int)
    out = {"subject_roc_auc": _auc(ys, mean_p), "subject_call_accuracy": float((call == ys).mean()),
           "n_subject_all": int(ys.sum()), "n_subject_hem": int(len(ys) - ys.sum())}
    strata = [np.flatnonzero(ys == c) for c in (0, 1)]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if n_boot <= 0 or min(len(s) for s in strata) < 2:
        for k in ("subject_roc_auc", "subject_call_accuracy"):
            out[f"{k}_ci_low"] = out[f"{k}_ci_high"] = float("nan")
        return out
    rng = np.random.default_rng(seed)
    aucs, accs = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        draw = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        aucs[b] = _auc(ys[draw], mean_p[draw])
        accs[b] = (call[draw] == ys[draw]).mean()
    for k, vals in (("subject_roc_auc", aucs), ("subject_call_accuracy", accs)):
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = (float(v) for v in np.quantile(vals, [lo_q, hi_q]))
    return out


def within_subject(p_all, subjects, weight: float = WITHIN_SUBJECT_WEIGHT) -> np.ndarray:
    """``weight * p + (1 - weight) * mean P(ALL) of the cell's subject``: a cell's probability pulled toward
    its subject's other cells (opt-in; it uses other cells of the same patient, so it is never a headline)."""
    p = np.asarray(p_all, dtype=float)
    s = pd.Series(p).groupby(np.asarray(subjects).astype(str)).transform("mean").to_numpy()
    return weight * p + (1 - weight) * s


def blast_fraction(n_called_all: int, n_cells: int, recall: float | None, specificity: float | None,
                   level: float = 0.95) -> tuple[float, float, float]:
    """A subject's share of blasts from the share of its cells called ALL, corrected for the model's known
    errors (adjusted classify-and-count): ``(q - fpr) / (tpr - fpr)`` clipped to [0, 1], with the Wilson
    interval of ``q`` mapped the same way. Without usable rates (tpr <= fpr) the plain share is returned.

    Returns ``(estimate, low, high)``; NaNs when ``n_cells`` is 0.
    """
    if n_cells <= 0:
        return float("nan"), float("nan"), float("nan")
    q = n_called_all / n_cells
    z = _z(level)
    denom = 1 + z * z / n_cells
    centre = (q + z * z / (2 * n_cells)) / denom
    half = z * math.sqrt(q * (1 - q) / n_cells + z * z / (4 * n_cells * n_cells)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    tpr, fpr = recall, (None if specificity is None else 1 - specificity)
    if tpr is None or fpr is None or not np.isfinite(tpr) or not np.isfinite(fpr) or tpr - fpr <= 0.05:
        return q, lo, hi

    def adjust(v: float) -> float:
        return float(min(1.0, max(0.0, (v - fpr) / (tpr - fpr))))

    return adjust(q), adjust(lo), adjust(hi)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - level) / 2))
