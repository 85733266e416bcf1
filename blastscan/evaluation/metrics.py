"""Metrics of P(ALL) predictions, subject-bootstrap intervals and per-subject accuracy.

One implementation with sample weights serves both: plain metrics use weights of 1, the subject
bootstrap uses how often each cell's group was drawn.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import roc_auc_score

from blastscan.evaluation.settings import EvalSettings
from blastscan.evaluation.splits import as_labels

__all__ = ["METRIC_NAMES", "CI_METRICS", "safe_div", "compute_metrics", "bootstrap_ci", "per_subject_accuracy",
           "within_fold_roc_auc"]

METRIC_NAMES = ("weighted_f1", "f1_all", "f1_hem", "recall_all", "specificity", "balanced_accuracy",
                "roc_auc", "pr_auc")
CI_METRICS = METRIC_NAMES


def safe_div(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


class _Scores:
    """Distinct scores of a prediction vector and a one-hot map cell -> distinct score, computed once and
    reused for every bootstrap draw."""

    def __init__(self, p: np.ndarray):
        self.values, self.inverse = np.unique(p, return_inverse=True)
        self.n = len(self.values)
        self.onehot = sparse.csr_matrix((np.ones(len(p)), (np.arange(len(p)), self.inverse)),
                                        shape=(len(p), self.n))


def _batch_metrics(y: np.ndarray, pred: np.ndarray, W: np.ndarray, scores: _Scores) -> dict[str, np.ndarray]:
    """Metrics for each row of cell weights ``W`` (shape (B, n)) at once; each value has shape (B,)."""
    pos = (y == 1).astype(float)
    called = (pred == 1).astype(float)
    tp = W @ (pos * called)
    fn = W @ (pos * (1 - called))
    fp = W @ ((1 - pos) * called)
    tn = W @ ((1 - pos) * (1 - called))
    n_pos, n_neg = tp + fn, tn + fp
    f1_all = safe_div(2 * tp, 2 * tp + fp + fn)
    f1_hem = safe_div(2 * tn, 2 * tn + fp + fn)
    weighted_f1 = safe_div(n_pos * np.nan_to_num(f1_all) + n_neg * np.nan_to_num(f1_hem), n_pos + n_neg)
    recall = safe_div(tp, n_pos)
    spec = safe_div(tn, n_neg)
    with np.errstate(invalid="ignore"):
        # mean of the recalls of the classes present (sklearn's balanced accuracy)
        bal = np.where(np.isnan(recall), spec, np.where(np.isnan(spec), recall, (recall + spec) / 2))
    # per distinct score: weight of ALL cells (wp) and HEM cells (wn) holding it, ascending scores
    wp = np.asarray((scores.onehot.T @ (W * pos).T).T)
    wn = np.asarray((scores.onehot.T @ (W * (1 - pos)).T).T)
    both = (n_pos > 0) & (n_neg > 0)
    # ROC-AUC = P(score of an ALL cell > score of a HEM cell) + half the ties (Mann-Whitney)
    below = np.cumsum(wn, axis=1) - wn
    auc = safe_div((wp * (below + 0.5 * wn)).sum(axis=1), n_pos * n_neg)
    # PR-AUC as average precision (sklearn's definition): sum over thresholds of dRecall * precision
    tps = np.cumsum(wp[:, ::-1], axis=1)
    fps = np.cumsum(wn[:, ::-1], axis=1)
    prec = np.nan_to_num(safe_div(tps, tps + fps))
    drec = safe_div(wp[:, ::-1], n_pos[:, None])
    ap = np.nansum(drec * prec, axis=1)
    auc = np.where(both, auc, np.nan)
    ap = np.where(both, ap, np.nan)
    return {"weighted_f1": weighted_f1, "f1_all": f1_all, "f1_hem": f1_hem, "recall_all": recall,
            "specificity": spec, "balanced_accuracy": bal, "roc_auc": auc, "pr_auc": ap,
            "tn": tn, "fp": fp, "fn": fn, "tp": tp}


def _weighted_metrics(y: np.ndarray, pred: np.ndarray, w: np.ndarray, scores: _Scores) -> dict[str, float]:
    """Metrics with one weight per cell (1 for plain metrics, the draw count in a bootstrap)."""
    out = _batch_metrics(y, pred, np.asarray(w, dtype=float)[None, :], scores)
    return {k: float(v[0]) for k, v in out.items()}


def _predictions(p: np.ndarray, threshold) -> np.ndarray:
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), p.shape)
    return (p >= thr).astype(int)


def compute_metrics(y_true, p_all, threshold, *, subjects=None, groups=None) -> dict[str, Any]:
    """Metrics of P(ALL) predictions at a threshold (ALL is the positive class).

    Parameters
    ----------
    y_true : array-like
        1 = ALL, 0 = HEM.
    p_all : array-like
        P(ALL).
    threshold : float or array-like
        A cell is called ALL when ``p_all >= threshold``; an array gives each cell its own threshold
        (pooled out-of-fold predictions, each thresholded by its own fold's threshold).
    subjects, groups : array-like, optional
        For ``n_subjects`` / ``n_groups``.

    Returns
    -------
    dict
        ``weighted_f1`` (the challenge metric: per-class F1 weighted by support), ``f1_all``,
        ``f1_hem``, ``recall_all`` (sensitivity), ``specificity``, ``balanced_accuracy``, ``roc_auc``,
        ``pr_auc`` (average precision of ALL), ``tn, fp, fn, tp``, ``n``, ``n_all``, ``n_hem``,
        ``n_subjects``, ``n_groups``. Metrics that a one-class sample cannot define are NaN.
    """
    y = as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    pred = _predictions(p, threshold)
    m: dict[str, Any] = _weighted_metrics(y, pred, np.ones(len(y)), _Scores(p))
    for k in ("tn", "fp", "fn", "tp"):
        m[k] = int(m[k])
    m["n"] = int(len(y))
    m["n_all"] = int(y.sum())
    m["n_hem"] = int(len(y) - y.sum())
    m["n_subjects"] = int(len(np.unique(np.asarray(subjects).astype(str)))) if subjects is not None else None
    m["n_groups"] = int(len(np.unique(np.asarray(groups).astype(str)))) if groups is not None else None
    return m


def bootstrap_ci(y_true, p_all, threshold, groups, *, n_boot: int = EvalSettings.n_boot,
                 seed: int = EvalSettings.seed, level: float = 0.95,
                 metrics: Sequence[str] = CI_METRICS) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of pooled metrics, resampling whole groups (subjects).

    Cells of one subject are not independent, so the resampling unit is the group: each draw picks
    groups with replacement, separately among ALL groups and among HEM groups (a group's class is its
    majority label), so every draw keeps both classes and the class balance of subjects. A cell counts
    as many times as its group was drawn.

    Parameters
    ----------
    y_true, p_all, threshold : see :func:`compute_metrics` (``threshold`` may be per cell).
    groups : array-like of str
    n_boot : int
        Number of resamples.
    seed : int
    level : float
        Coverage of the interval (0.95: 2.5th and 97.5th percentiles).
    metrics : names from :data:`METRIC_NAMES`

    Returns
    -------
    dict
        ``name -> (low, high)``; ``(nan, nan)`` where fewer than half the draws define the metric, and
        for every metric when a class has fewer than two groups.
    """
    y = as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    pred = _predictions(p, threshold)
    groups = np.asarray(groups).astype(str)
    uniq, ginv = np.unique(groups, return_inverse=True)
    g_pos = np.bincount(ginv, weights=y, minlength=len(uniq))
    g_n = np.bincount(ginv, minlength=len(uniq))
    g_class = (g_pos * 2 >= g_n).astype(int)
    strata = [np.flatnonzero(g_class == c) for c in (0, 1)]
    if min(len(s) for s in strata) < 2:
        # one subject of a class: resampling subjects cannot say anything about the spread
        return {name: (float("nan"), float("nan")) for name in metrics}
    rng = np.random.default_rng(seed)
    scores = _Scores(p)
    # the draws: how often each group is picked, per resample (B, n_groups); the same stream of random
    # numbers whatever the chunking below, so results depend only on the seed
    n_groups = len(uniq)
    counts = np.zeros((n_boot, n_groups))
    rows = np.arange(n_boot)[:, None] * n_groups
    for s in strata:
        picks = s[rng.integers(0, len(s), size=(n_boot, len(s)))]
        counts += np.bincount((rows + picks).ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    draws = {m: np.empty(n_boot) for m in metrics}
    for start in range(0, n_boot, 128):  # bounded memory: 128 draws x distinct scores at a time
        # cells of groups not drawn get weight 0 and drop out of every sum
        batch = _batch_metrics(y, pred, counts[start:start + 128][:, ginv], scores)
        for name in metrics:
            draws[name][start:start + 128] = batch[name]
    alpha = (1 - level) / 2
    out = {}
    for name, vals in draws.items():
        vals = vals[~np.isnan(vals)]
        if len(vals) < n_boot / 2:
            out[name] = (float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(vals, [alpha, 1 - alpha])
            out[name] = (float(lo), float(hi))
    return out


def per_subject_accuracy(subjects, groups, y_true, p_all, threshold) -> pd.DataFrame:
    """Accuracy per subject: every subject has one class, so it is the fraction of its cells called right.

    Returns a DataFrame with ``subject, group, label, n_cells, n_correct, accuracy, mean_p_all``,
    sorted by accuracy.
    """

    y = as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    pred = _predictions(p, threshold)
    df = pd.DataFrame({"subject": np.asarray(subjects).astype(str), "group": np.asarray(groups).astype(str),
                       "y": y, "correct": (pred == y).astype(int), "p": p})
    out = df.groupby("subject", sort=True).agg(group=("group", "first"), y=("y", "mean"), n_cells=("y", "size"),
                                               n_correct=("correct", "sum"), mean_p_all=("p", "mean"))
    out["label"] = np.where(out["y"] >= 0.5, "all", "hem")
    out["accuracy"] = out["n_correct"] / out["n_cells"]
    out = out.reset_index()[["subject", "group", "label", "n_cells", "n_correct", "accuracy", "mean_p_all"]]
    return out.sort_values(["accuracy", "subject"], kind="stable").reset_index(drop=True)


def within_fold_roc_auc(y_true, p_all, fold) -> float:
    """Mean over the outer folds of the ROC-AUC within each fold's held-out cells.

    Pooled out-of-fold ROC-AUC compares scores of different models (one per fold) on one scale, so a
    per-fold rescaling of P(ALL), such as each fold's calibration map, moves it although no fold ranks its
    cells differently. This figure does not move: it only ever compares cells scored by the same model.
    Folds whose held-out cells are of one class are left out; NaN when none is left.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_all, dtype=float)
    fold = np.asarray(fold)
    aucs = []
    for k in np.unique(fold):
        m = (fold == k) & ~np.isnan(p)
        if 0 < y[m].sum() < m.sum():
            aucs.append(roc_auc_score(y[m], p[m]))
    return float(np.mean(aucs)) if aucs else float("nan")
