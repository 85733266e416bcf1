"""Decision thresholds on P(ALL), chosen on training data only (out-of-fold predictions)."""

from __future__ import annotations

import math

import numpy as np

from blastscan.evaluation.metrics import safe_div
from blastscan.evaluation.settings import EvalSettings, check_rule
from blastscan.evaluation.splits import as_labels

__all__ = ["choose_threshold"]


def choose_threshold(y_true, p_all, rule: str = EvalSettings.threshold_rule,
                     target_recall: float = EvalSettings.target_recall) -> float:
    """Decision threshold on P(ALL) (a cell is called ALL when ``p_all >= threshold``).

    Parameters
    ----------
    y_true, p_all : arrays
        Labels (1 = ALL) and P(ALL) of TRAINING data (out-of-fold predictions): never the test fold.
    rule : {"recall", "f1"}
        One of :data:`~blastscan.evaluation.settings.RULES`. ``"recall"``: the highest threshold whose ALL
        recall (sensitivity) is at least ``target_recall``, i.e. the best specificity at that sensitivity.
        ``"f1"``: the threshold with the best weighted F1 (ties go to the lower threshold, favouring sensitivity).
    target_recall : float
        For ``rule="recall"``.

    Returns
    -------
    float
        The threshold; 0.5 when the data cannot define one (no ALL or no HEM samples).
    """
    check_rule(rule, target_recall)
    y = as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    if rule == "recall":
        pos = np.sort(p[y == 1])[::-1]
        k = max(1, math.ceil(target_recall * n_pos - 1e-9))
        return float(pos[k - 1])
    # rule == "f1": evaluate every distinct score as threshold at once
    cand = np.unique(p)[::-1]  # descending
    tp = np.searchsorted(-np.sort(p[y == 1])[::-1], -cand, side="right")  # positives with p >= t
    fp = np.searchsorted(-np.sort(p[y == 0])[::-1], -cand, side="right")
    fn = n_pos - tp
    tn = n_neg - fp
    f1_pos = safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = safe_div(2 * tn, 2 * tn + fp + fn)
    wf1 = (n_pos * np.nan_to_num(f1_pos) + n_neg * np.nan_to_num(f1_neg)) / (n_pos + n_neg)
    best = np.flatnonzero(wf1 >= wf1.max() - 1e-12)
    return float(cand[best[-1]])
