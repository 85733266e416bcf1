"""The one procedure that turns a model into a decision: calibration map + threshold, from grouped
out-of-fold P(ALL) of its training subjects.

``compare`` runs it inside every outer training part (on that part's inner out-of-fold predictions) and
measures it on the outer test fold; ``train`` and ``export`` run the very same :func:`decide` on an inner
subject-disjoint CV over all training subjects (:func:`blastscan.evaluation.cv.shipped_decision`), with as many folds as compare's
inner CVs had, so the shipped threshold comes from the procedure whose outer-fold result compare reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from blastscan.evaluation.calibration import apply_calibration, fit_calibration
from blastscan.evaluation.settings import RULES, EvalSettings
from blastscan.evaluation.splits import as_labels
from blastscan.evaluation.thresholds import choose_threshold

__all__ = ["OPERATING_TARGETS", "SPREAD_BOUND", "Decision", "decide", "operating_targets", "threshold_spread",
           "spread_note", "shipped_inner_splits"]

#: Target ALL recalls whose held-out recall and specificity every comparison reports (``--target-recall``
#: picks the one that ships; it is added to these when it is another value).
OPERATING_TARGETS = (0.90, 0.95, 0.97)

#: Per-fold thresholds (calibrated P(ALL)) whose range (max - min over outer folds) exceeds this are
#: reported as unstable: the procedure's threshold depends on which subjects trained it.
SPREAD_BOUND = 0.20


def operating_targets(target_recall: float) -> tuple[float, ...]:
    """:data:`OPERATING_TARGETS` plus ``target_recall`` (sorted, no duplicates)."""
    return tuple(sorted({round(float(t), 4) for t in (*OPERATING_TARGETS, target_recall)}))


@dataclass
class Decision:
    """What :func:`decide` chose from out-of-fold P(ALL) of training subjects.

    Attributes
    ----------
    calibration : dict or None
        The map of :mod:`blastscan.evaluation.calibration` (None: P(ALL) used as the model gives it).
    thresholds : dict
        rule (``"recall"``, ``"f1"``) -> threshold on calibrated P(ALL).
    targets : dict
        target ALL recall -> threshold on calibrated P(ALL) (the ``"recall"`` rule at that target).
    raw_thresholds : dict
        rule -> the same threshold on the model's raw P(ALL) (for the leaky view, which has no calibration).
    p_oof : ndarray
        The calibrated out-of-fold P(ALL) the thresholds were chosen on.
    note : str
        Why there were no out-of-fold predictions, when there were none.
    """

    calibration: dict | None
    thresholds: dict[str, float]
    targets: dict[float, float] = field(default_factory=dict)
    raw_thresholds: dict[str, float] = field(default_factory=dict)
    p_oof: np.ndarray | None = None
    note: str = ""

    def threshold(self, rule: str, target_recall: float) -> float:
        """The threshold of ``rule`` (at ``target_recall`` for the recall rule)."""
        if rule == "recall" and round(float(target_recall), 4) in self.targets:
            return self.targets[round(float(target_recall), 4)]
        return self.thresholds[rule]


def decide(y_true, p_oof, *, groups=None, rules: Sequence[str] = tuple(RULES),
           target_recall: float = EvalSettings.target_recall, targets: Sequence[float] = (),
           threshold_fn: Callable | None = None, calibrate: bool = True) -> Decision:
    """Calibration map and thresholds from out-of-fold P(ALL) of TRAINING subjects (never the test fold).

    Parameters
    ----------
    y_true, p_oof : arrays
        Labels and raw out-of-fold P(ALL) (every cell predicted by a model that never saw its subject);
        ``p_oof`` None: no out-of-fold predictions (thresholds 0.5, no calibration).
    groups : array, optional
        Subject of each cell: every subject weighs the same in the calibration fit.
    rules : the threshold rules to evaluate (see :func:`choose_threshold`)
    target_recall : float
        Target of the ``"recall"`` rule.
    targets : target recalls for which the recall rule's threshold is also given (operating points)
    threshold_fn : replaces :func:`choose_threshold` (for tests)
    calibrate : bool
        Fit the calibration map (False: thresholds on raw P(ALL)).
    """
    threshold_fn = threshold_fn or choose_threshold
    if p_oof is None:
        return Decision(None, {r: 0.5 for r in rules}, {round(float(t), 4): 0.5 for t in targets},
                        {r: 0.5 for r in rules}, None)
    y = as_labels(y_true)
    raw = np.asarray(p_oof, dtype=float)
    cal = fit_calibration(y, raw, groups) if calibrate else None
    p = apply_calibration(raw, cal)
    thresholds = {r: float(threshold_fn(y, p, rule=r, target_recall=target_recall)) for r in rules}
    raw_thr = {r: float(threshold_fn(y, raw, rule=r, target_recall=target_recall)) for r in rules}
    at = {round(float(t), 4): float(threshold_fn(y, p, rule="recall", target_recall=float(t))) for t in targets}
    return Decision(cal, thresholds, at, raw_thr, p)


def threshold_spread(fold_thresholds: Sequence[float]) -> float:
    """Range (max - min) of per-fold thresholds; NaN for fewer than two."""
    t = np.asarray([x for x in fold_thresholds if x is not None and not np.isnan(x)], dtype=float)
    return float(t.max() - t.min()) if len(t) >= 2 else float("nan")


def spread_note(fold_thresholds: Sequence[float], bound: float = SPREAD_BOUND) -> str:
    """A warning when the per-fold thresholds spread more than ``bound``; "" otherwise."""
    s = threshold_spread(fold_thresholds)
    if np.isnan(s) or s <= bound:
        return ""
    return (f"unstable threshold: the per-fold thresholds (calibrated P(ALL)) range over {s:.3f} "
            f"({min(fold_thresholds):.3f}-{max(fold_thresholds):.3f}, more than {bound:.2f}); the shipped "
            "threshold depends on which subjects it was chosen on, so its recall and specificity on new "
            "patients are less certain than the intervals say")


def shipped_inner_splits(n_outer: int, inner_mode: str, inner_folds: int) -> int:
    """How many folds the shipped model's threshold CV has: as many as compare's inner CVs had
    (K - 1 when they ran over the other outer folds, else ``inner_folds``), so the inner models are the
    same share of their training data as in compare."""
    return int(n_outer - 1) if inner_mode == "pairs" else int(inner_folds)
