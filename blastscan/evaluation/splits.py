"""Subject-disjoint splits: grouped stratified folds that never divide a subject group, and the (leaky)
per-image folds kept only to show how much such a split inflates results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from blastscan.errors import BlastscanError
from blastscan.evaluation.settings import EvalSettings

__all__ = ["FoldPlan", "as_labels", "plan_subject_folds", "subject_folds", "leaky_folds"]


@dataclass
class FoldPlan:
    """Folds plus what had to be adapted to the data (reported, never silent).

    Attributes
    ----------
    folds : list of (train_idx, test_idx)
    n_splits_requested, n_splits : int
    notes : list of str
        Why ``n_splits`` was reduced, which test folds hold one class only, ...
    one_class_folds : list of int
        Test folds with a single class (their ROC-AUC / PR-AUC are undefined).
    """

    folds: list[tuple[np.ndarray, np.ndarray]]
    n_splits_requested: int
    n_splits: int
    notes: list[str] = field(default_factory=list)
    one_class_folds: list[int] = field(default_factory=list)


def as_labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind in "OUS" or y.dtype.name.startswith("str"):
        y = np.array([1 if str(v).lower() == "all" else 0 for v in y])
    return y.astype(int)


def _groups_per_class(groups: np.ndarray, y: np.ndarray) -> dict[int, int]:
    """Number of distinct groups holding at least one sample of each class."""
    return {int(c): int(len(np.unique(groups[y == c]))) for c in (0, 1)}


def plan_subject_folds(groups, y, n_splits: int = EvalSettings.folds, seed: int = EvalSettings.seed, *,
                       what: str = "subject folds") -> FoldPlan:
    """Grouped, stratified folds that never split a group, adapted to what the data supports.

    ``StratifiedGroupKFold`` needs at least ``n_splits`` groups of each class for every test fold to
    have a chance to hold both classes; with few subjects of the minority class, ``n_splits`` is reduced
    to that number (and the reduction is noted). If a training part would still hold one class only,
    ``n_splits`` is reduced further. Test folds with one class are allowed and listed: per-fold ROC-AUC
    is undefined there; pooled out-of-fold metrics are the headline.

    Parameters
    ----------
    groups : array-like of str, shape (n,)
        The split unit of each sample (the manifest's ``group``).
    y : array-like, shape (n,)
        1 = ALL, 0 = HEM (or the strings "all"/"hem").
    n_splits : int
        Requested number of folds.
    seed : int
        Seed of the fold shuffling.

    Raises
    ------
    BlastscanError
        When fewer than two groups hold each class, no subject-disjoint split exists.
    """
    groups = np.asarray(groups).astype(str)
    y = as_labels(y)
    if len(groups) != len(y):
        raise ValueError("groups and y differ in length")
    per_class = _groups_per_class(groups, y)
    names = {1: "ALL", 0: "HEM"}
    support = min(per_class.values())
    if support < 2:
        detail = ", ".join(f"{per_class[c]} {names[c]}" for c in (1, 0))
        raise BlastscanError(what, f"a subject-disjoint split needs at least 2 subjects (groups) of each class; "
                                   f"the data has {detail}")
    requested = int(n_splits)
    if requested < 2:
        raise BlastscanError(what, f"n_splits must be at least 2 (got {requested})")
    notes: list[str] = []
    k = min(requested, support)
    if k < requested:
        minority = min(per_class, key=per_class.get)
        notes.append(f"{what}: {requested} folds requested but only {support} {names[minority]} subject groups "
                     f"exist; using {k} folds so every fold can hold subjects of both classes")
    while True:
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(len(y)), y, groups)]
        folds = [(tr, te) for tr, te in folds if len(te)]
        bad_train = [i for i, (tr, _) in enumerate(folds) if len(np.unique(y[tr])) < 2]
        if not bad_train and len(folds) >= 2:
            break
        if k <= 2:
            raise BlastscanError(what, "no subject-disjoint split leaves both classes in every training part "
                                       "(one subject group dominates a class)")
        notes.append(f"{what}: with {k} folds a training part would hold one class only; using {k - 1} folds")
        k -= 1
    one_class = [i for i, (_, te) in enumerate(folds) if len(np.unique(y[te])) < 2]
    if one_class:
        notes.append(f"{what}: test fold(s) {', '.join(map(str, one_class))} hold one class only: "
                     "their ROC-AUC/PR-AUC are undefined (NaN); pooled out-of-fold metrics are the headline")
    return FoldPlan(folds=folds, n_splits_requested=requested, n_splits=len(folds), notes=notes,
                    one_class_folds=one_class)


def subject_folds(groups, y, n_splits: int = EvalSettings.folds,
                  seed: int = EvalSettings.seed) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedGroupKFold`` on ``groups``: folds that never split a group (see :func:`plan_subject_folds`)."""
    return plan_subject_folds(groups, y, n_splits, seed).folds


def leaky_folds(y, n_splits: int = EvalSettings.leaky_folds,
                seed: int = EvalSettings.seed) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-image ``StratifiedKFold`` that ignores subjects. LEAKY: for showing inflation only."""
    y = as_labels(y)
    k = max(2, min(int(n_splits), int(np.bincount(y, minlength=2).min())))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(len(y)), y)]
