"""Calibrated P(ALL): a post-hoc map of a model's P(ALL), fitted on subject-grouped out-of-fold scores.

The map is Platt's sigmoid on the log-odds of the model's P(ALL), fitted with scikit-learn's
``LogisticRegression`` (nearly unregularised) on out-of-fold P(ALL) of a subject-disjoint CV of the training
data, so it never sees a cell scored by a model that was fitted on that cell's subject::

    P_cal = 1 / (1 + exp(-(a * logit(P_raw) + b)))

Each subject weighs the same in the fit (its cells share a weight of 1 / its cell count, rescaled to a mean
of 1): on C-NMC two healthy subjects hold 785 of 2,299 cells, and a cell-weighted fit followed them, not
the patients (on the dev data's training parts it gave a negative slope in 2 of 5 folds, whose inner
out-of-fold cell-level ROC-AUC was 0.32 and 0.18, while the subject-weighted one was positive in all 5).

It is stored as two plain numbers (``{"method": "platt_logit", "a": ..., "b": ...}``), in run records and
in bundles, and applied after the model by :func:`apply_calibration`, the one function compare and score
share. The slope must be positive, so the map never reverses nor flattens the model's ranking and changes
no call at a threshold rule (ROC-AUC of one model on one fold is unchanged; pooled over folds, each fold's
map puts the scores on one scale); where the fit gives no positive slope, no map is used.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from blastscan.errors import BlastscanError
from blastscan.evaluation.splits import as_labels

__all__ = ["CALIBRATION_METHOD", "subject_weights", "fit_calibration", "apply_calibration", "brier_score", "reliability_table"]

CALIBRATION_METHOD = "platt_logit"
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def subject_weights(groups) -> np.ndarray:
    """One weight per cell so that every subject (group) weighs the same; mean weight 1."""
    g = np.asarray(groups).astype(str)
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w * (len(w) / w.sum())


def fit_calibration(y_true, p_all, groups=None) -> dict[str, Any] | None:
    """Fit the calibration map on out-of-fold P(ALL) of training data (never on the cells it will score).

    Parameters
    ----------
    y_true, p_all : arrays
        Labels (1 = ALL) and out-of-fold P(ALL) of training cells (NaN entries are ignored).
    groups : array, optional
        Subject (split group) of each cell: every subject then weighs the same in the fit.

    Returns
    -------
    dict or None
        ``{"method": "platt_logit", "a": float, "b": float, "n": int, "weights": ...}``; None when the
        data hold one class, or when the fitted slope is not positive (the out-of-fold P(ALL) rank the
        training subjects' cells backwards): P(ALL) is then used as the model gives it, since a flat or
        reversing map would change the model's calls.
    """
    y = as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    if len(np.unique(y)) < 2:
        return None
    w = subject_weights(np.asarray(groups)[ok]) if groups is not None else None
    z = _logit(p)[:, None]
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(z, y, sample_weight=w)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not a > 1e-6:
        return None
    return {"method": CALIBRATION_METHOD, "a": a, "b": b, "n": int(len(y)),
            "weights": "subject" if groups is not None else "cell"}


def apply_calibration(p_all, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """The calibrated P(ALL) of raw model P(ALL) ``p_all`` (NaN stays NaN); ``None`` returns it unchanged.

    This is the one place the map is applied: compare's outer folds, ``score``, ``view`` and the Python
    API's ``Bundle.predict_proba``.
    """
    p = np.asarray(p_all, dtype=float)
    if not calibration:
        return p
    if calibration.get("method") != CALIBRATION_METHOD:
        raise BlastscanError("calibration", f"unknown method {calibration.get('method')!r}")
    out = expit(float(calibration["a"]) * _logit(p) + float(calibration["b"]))
    return np.where(np.isnan(p), np.nan, out)


def brier_score(y_true, p_all) -> float:
    """Mean squared difference between P(ALL) and the label (lower is better; NaN entries ignored)."""
    y = as_labels(y_true).astype(float)
    p = np.asarray(p_all, dtype=float)
    ok = ~np.isnan(p)
    return float(np.mean((p[ok] - y[ok]) ** 2)) if ok.any() else float("nan")


def reliability_table(y_true, p_all, n_bins: int = 10):
    """Per bin of P(ALL) (``n_bins`` equal widths on [0, 1]): cells, mean P(ALL), observed share of ALL."""
    y = as_labels(y_true).astype(float)
    p = np.asarray(p_all, dtype=float)
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    rows = [{"bin_low": i / n_bins, "bin_high": (i + 1) / n_bins, "n": int((b == i).sum()),
             "mean_p_all": float(p[b == i].mean()), "share_all": float(y[b == i].mean())}
            for i in range(n_bins) if (b == i).any()]
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_p_all", "share_all"])
