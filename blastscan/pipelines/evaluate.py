"""Subject-disjoint evaluation: grouped folds, out-of-fold predictions, thresholds, metrics, bootstrap CIs.

Every split here keeps a ``group`` (a subject, or subjects linked by byte-identical images) on one side.
Thresholds are chosen on training data only (grouped out-of-fold predictions inside each outer training
part). The one exception, :func:`leaky_folds`, exists to show how much a per-image split inflates results
and is always labelled as leaky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from blastscan.errors import BlastscanError

__all__ = [
    "LEAKY_NOTE",
    "METRIC_NAMES",
    "CI_METRICS",
    "FoldPlan",
    "plan_subject_folds",
    "subject_folds",
    "leaky_folds",
    "make_classifier",
    "fit_predict",
    "oof_predict",
    "choose_threshold",
    "compute_metrics",
    "bootstrap_ci",
    "per_subject_accuracy",
    "FitTask",
    "run_fit",
    "subject_cv_tasks",
    "assemble_subject_cv",
    "holdout_tasks",
    "assemble_holdout",
    "SubjectCV",
    "subject_cv",
]

LEAKY_NOTE = "leaky: cells of one patient on both sides — do not trust"
METRIC_NAMES = ("weighted_f1", "f1_all", "f1_hem", "recall_all", "specificity", "balanced_accuracy",
                "roc_auc", "pr_auc")
CI_METRICS = METRIC_NAMES


# ------------------------------------------------------------------------------------------------
# splits
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


def _as_labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind in "OUS" or y.dtype.name.startswith("str"):
        y = np.array([1 if str(v).lower() == "all" else 0 for v in y])
    return y.astype(int)


def _groups_per_class(groups: np.ndarray, y: np.ndarray) -> dict[int, int]:
    """Number of distinct groups holding at least one sample of each class."""
    return {int(c): int(len(np.unique(groups[y == c]))) for c in (0, 1)}


def plan_subject_folds(groups, y, n_splits: int = 5, seed: int = 0, *, what: str = "subject folds") -> FoldPlan:
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
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(groups).astype(str)
    y = _as_labels(y)
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


def subject_folds(groups, y, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedGroupKFold`` on ``groups``: folds that never split a group (see :func:`plan_subject_folds`)."""
    return plan_subject_folds(groups, y, n_splits, seed).folds


def leaky_folds(y, n_splits: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-image ``StratifiedKFold`` that ignores subjects. LEAKY: for showing inflation only."""
    from sklearn.model_selection import StratifiedKFold

    y = _as_labels(y)
    k = max(2, min(int(n_splits), int(np.bincount(y, minlength=2).min())))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(np.zeros(len(y)), y)]


# ------------------------------------------------------------------------------------------------
# classifiers
def make_classifier(spec, params: Mapping[str, Any] | None = None, seed: int = 0):
    """A fresh, unfitted estimator from a classifier name, a factory, or an estimator to clone.

    Names go through :func:`blastscan.classifiers.get_classifier`; a callable is called as
    ``spec(random_state=seed, **params)``; an estimator instance is cloned and given ``params``.
    """
    params = dict(params or {})
    if isinstance(spec, str):
        from blastscan.classifiers import get_classifier

        return get_classifier(spec, random_state=seed, **params)
    if isinstance(spec, type) or (callable(spec) and not hasattr(spec, "fit")):
        return spec(random_state=seed, **params)
    from sklearn.base import clone

    est = clone(spec)
    return est.set_params(**params) if params else est


def _fit(est, X, y, groups):
    # fit_classifier is the one way to fit: it hands groups to models that split internally (SVM
    # calibration, FCN early stopping) so even their inner splits are subject-disjoint.
    try:
        from blastscan.classifiers import fit_classifier
    except ImportError:  # classifiers package without the helper (plain estimators still work)
        return est.fit(X, y)
    return fit_classifier(est, X, y, groups=groups)


def fit_predict(spec, params, X, y, groups, train, test, seed: int = 0) -> np.ndarray:
    """Fit a fresh classifier on ``train`` rows and return P(ALL) for ``test`` rows."""
    est = make_classifier(spec, params, seed)
    est = _fit(est, X[train], y[train], groups[train]) or est
    col = list(getattr(est, "classes_", [0, 1])).index(1)  # the P(ALL) column, whatever the class order
    return np.asarray(est.predict_proba(X[test]))[:, col].astype(float)


def oof_predict(classifier_name, params, X, y, groups, n_splits: int = 5, seed: int = 0, *,
                folds=None) -> np.ndarray:
    """Out-of-fold P(ALL) from subject-disjoint folds (every sample predicted by a model that never
    saw its group).

    Parameters
    ----------
    classifier_name : str, callable or estimator
        See :func:`make_classifier`.
    params : dict or None
        Classifier parameters.
    X, y, groups : arrays
    n_splits, seed : int
        Folds from :func:`subject_folds` unless ``folds`` is given.
    """
    X = np.asarray(X)
    y = _as_labels(y)
    groups = np.asarray(groups).astype(str)
    folds = subject_folds(groups, y, n_splits, seed) if folds is None else folds
    p = np.full(len(y), np.nan)
    for tr, te in folds:
        p[te] = fit_predict(classifier_name, params, X, y, groups, tr, te, seed)
    return p


# ------------------------------------------------------------------------------------------------
# thresholds
def choose_threshold(y_true, p_all, rule: str = "recall", target_recall: float = 0.90) -> float:
    """Decision threshold on P(ALL) (a cell is called ALL when ``p_all >= threshold``).

    Parameters
    ----------
    y_true, p_all : arrays
        Labels (1 = ALL) and P(ALL) of TRAINING data (out-of-fold predictions): never the test fold.
    rule : {"recall", "f1"}
        ``"recall"``: the highest threshold whose ALL recall (sensitivity) is at least
        ``target_recall``, i.e. the best specificity at that sensitivity. ``"f1"``: the threshold with the
        best weighted F1 (ties go to the lower threshold, favouring sensitivity).
    target_recall : float
        For ``rule="recall"``.

    Returns
    -------
    float
        The threshold; 0.5 when the data cannot define one (no ALL or no HEM samples).
    """
    y = _as_labels(y_true)
    p = np.asarray(p_all, dtype=float)
    if rule not in ("recall", "f1"):
        raise BlastscanError("--threshold", f"unknown rule '{rule}'; choose recall or f1")
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    if rule == "recall":
        if not 0 < target_recall <= 1:
            raise BlastscanError("--target-recall", f"must be in (0, 1] (got {target_recall})")
        pos = np.sort(p[y == 1])[::-1]
        k = max(1, math.ceil(target_recall * n_pos - 1e-9))
        return float(pos[k - 1])
    # rule == "f1": evaluate every distinct score as threshold at once
    cand = np.unique(p)[::-1]  # descending
    tp = np.searchsorted(-np.sort(p[y == 1])[::-1], -cand, side="right")  # positives with p >= t
    fp = np.searchsorted(-np.sort(p[y == 0])[::-1], -cand, side="right")
    fn = n_pos - tp
    tn = n_neg - fp
    f1_pos = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_div(2 * tn, 2 * tn + fp + fn)
    wf1 = (n_pos * np.nan_to_num(f1_pos) + n_neg * np.nan_to_num(f1_neg)) / (n_pos + n_neg)
    best = np.flatnonzero(wf1 >= wf1.max() - 1e-12)
    return float(cand[best[-1]])


# ------------------------------------------------------------------------------------------------
# metrics (one implementation with sample weights: plain metrics use weights of 1, the subject bootstrap
# uses how often each sample's group was drawn)
def _safe_div(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


class _Scores:
    """Distinct scores of a prediction vector and a one-hot map cell -> distinct score, computed once and
    reused for every bootstrap draw."""

    def __init__(self, p: np.ndarray):
        from scipy import sparse

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
    f1_all = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_hem = _safe_div(2 * tn, 2 * tn + fp + fn)
    weighted_f1 = _safe_div(n_pos * np.nan_to_num(f1_all) + n_neg * np.nan_to_num(f1_hem), n_pos + n_neg)
    recall = _safe_div(tp, n_pos)
    spec = _safe_div(tn, n_neg)
    with np.errstate(invalid="ignore"):
        # mean of the recalls of the classes present (sklearn's balanced accuracy)
        bal = np.where(np.isnan(recall), spec, np.where(np.isnan(spec), recall, (recall + spec) / 2))
    # per distinct score: weight of ALL cells (wp) and HEM cells (wn) holding it, ascending scores
    wp = np.asarray((scores.onehot.T @ (W * pos).T).T)
    wn = np.asarray((scores.onehot.T @ (W * (1 - pos)).T).T)
    both = (n_pos > 0) & (n_neg > 0)
    # ROC-AUC = P(score of an ALL cell > score of a HEM cell) + half the ties (Mann-Whitney)
    below = np.cumsum(wn, axis=1) - wn
    auc = _safe_div((wp * (below + 0.5 * wn)).sum(axis=1), n_pos * n_neg)
    # PR-AUC as average precision (sklearn's definition): sum over thresholds of dRecall * precision
    tps = np.cumsum(wp[:, ::-1], axis=1)
    fps = np.cumsum(wn[:, ::-1], axis=1)
    prec = np.nan_to_num(_safe_div(tps, tps + fps))
    drec = _safe_div(wp[:, ::-1], n_pos[:, None])
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
    y = _as_labels(y_true)
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


def bootstrap_ci(y_true, p_all, threshold, groups, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
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
    y = _as_labels(y_true)
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


def per_subject_accuracy(subjects, groups, y_true, p_all, threshold) -> "pd.DataFrame":
    """Accuracy per subject: every subject has one class, so it is the fraction of its cells called right.

    Returns a DataFrame with ``subject, group, label, n_cells, n_correct, accuracy, mean_p_all``,
    sorted by accuracy.
    """
    import pandas as pd

    y = _as_labels(y_true)
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


# ------------------------------------------------------------------------------------------------
# a subject-disjoint CV as a list of independent model fits (so a whole grid can share one worker pool)
#
# Each outer fold k needs its test predictions (a model fitted on every other fold) and a threshold chosen
# from out-of-fold predictions on its training part only. The inner CV reuses the outer folds: the training
# part of fold k is the other K-1 folds, and fold j of it is predicted by a model fitted on all folds except
# j and k. That model serves outer folds k and j alike, so the inner CVs of all K outer folds cost
# K(K-1)/2 fits ("pair" fits) instead of K x inner_splits, and each inner CV has K-1 folds (K = 5: 10 fits
# on 60% of the data instead of 15 on 53%). It is used for 4 <= K <= 2 * inner_splits + 1 when every
# "all folds but two" holds both classes; otherwise each outer fold runs its own inner subject-disjoint CV
# with ``inner_splits`` folds.
@dataclass(frozen=True)
class FitTask:
    """One model fit: train on ``train`` rows, predict P(ALL) for ``predict`` rows.

    ``key`` names its role: ``("outer", k)``, ``("pair", j, k)``, ``("inner", k, i)``, ``("holdout",)``,
    ``("holdout_inner", i)``, ``("leaky", i)``.
    """

    key: tuple
    train: np.ndarray
    predict: np.ndarray


def run_fit(spec, params, X, y, groups, task: FitTask, seed: int = 0) -> np.ndarray:
    """Execute a :class:`FitTask`; returns P(ALL) of ``task.predict`` rows (same order)."""
    return fit_predict(spec, params, X, y, groups, task.train, task.predict, seed)


def _pairs_possible(plan: FoldPlan, y: np.ndarray, inner_splits: int) -> bool:
    k = plan.n_splits
    # With K < 4 a pair model sees too little data (1/3 of it for K = 3); past 2 * inner_splits + 1 folds
    # the K(K-1)/2 pair fits cost more than K nested inner CVs.
    if not 4 <= k <= 2 * inner_splits + 1:
        return False
    tests = [te for _, te in plan.folds]
    for a in range(k):
        for b in range(a + 1, k):
            rest = np.concatenate([tests[i] for i in range(k) if i not in (a, b)])
            if len(np.unique(y[rest])) < 2:
                return False
    return True


def subject_cv_tasks(plan: FoldPlan, y, groups, *, inner_splits: int = 3, seed: int = 0) -> tuple[list[FitTask], dict]:
    """The fits a subject-disjoint CV with training-only thresholds needs.

    Returns the tasks and an ``inner`` description used by :func:`assemble_subject_cv`:
    ``{"mode": "pairs"}``, or ``{"mode": "nested", "plans": {k: FoldPlan | None}, "notes": {k: str}}``.
    """
    y = _as_labels(y)
    groups = np.asarray(groups).astype(str)
    tasks = [FitTask(("outer", k), tr, te) for k, (tr, te) in enumerate(plan.folds)]
    if inner_splits and _pairs_possible(plan, y, inner_splits):
        tests = [te for _, te in plan.folds]
        for a in range(plan.n_splits):
            for b in range(a + 1, plan.n_splits):
                train = np.sort(np.concatenate([tests[i] for i in range(plan.n_splits) if i not in (a, b)]))
                tasks.append(FitTask(("pair", a, b), train, np.concatenate([tests[a], tests[b]])))
        return tasks, {"mode": "pairs"}
    inner = {"mode": "nested", "plans": {}, "notes": {}}
    for k, (tr, _) in enumerate(plan.folds):
        inner["plans"][k] = None
        if not inner_splits:
            continue
        try:
            ip = plan_subject_folds(groups[tr], y[tr], inner_splits, seed, what="inner threshold folds")
        except BlastscanError as exc:
            inner["notes"][k] = f"threshold left at 0.5: {exc.why}"
            continue
        inner["plans"][k] = ip
        tasks += [FitTask(("inner", k, i), tr[itr], tr[ite]) for i, (itr, ite) in enumerate(ip.folds)]
    return tasks, inner


@dataclass
class SubjectCV:
    """Pooled out-of-fold result of a subject-disjoint CV.

    Attributes
    ----------
    plan : FoldPlan
    p_all : ndarray
        Out-of-fold P(ALL) of every cell.
    fold : ndarray of int
        The outer fold that tested each cell.
    thresholds : dict
        rule -> per-cell threshold (the threshold of the cell's fold).
    fold_thresholds : dict
        rule -> list of one threshold per fold, each chosen on that fold's training part only.
    inner : str
        How thresholds were chosen (``"pairs"``: inner CV over the other K-1 outer folds; ``"nested"``).
    notes : list of str
    """

    plan: FoldPlan
    p_all: np.ndarray
    fold: np.ndarray
    thresholds: dict[str, np.ndarray]
    fold_thresholds: dict[str, list[float]]
    inner: str
    notes: list[str]


def assemble_subject_cv(plan: FoldPlan, inner: dict, preds: Mapping[tuple, np.ndarray], y, *,
                        rules: Sequence[str] = ("recall", "f1"), target_recall: float = 0.90,
                        threshold_fn: Callable | None = None) -> SubjectCV:
    """Pool the fits of :func:`subject_cv_tasks` (``preds[key]`` = predictions of that task) and choose
    each fold's thresholds from out-of-fold predictions on its training part only."""
    threshold_fn = threshold_fn or choose_threshold
    y = _as_labels(y)
    n = len(y)
    p = np.full(n, np.nan)
    fold = np.full(n, -1)
    tests = [te for _, te in plan.folds]
    notes = list(plan.notes)
    fold_thr = {r: [] for r in rules}
    for k, (tr, te) in enumerate(plan.folds):
        p[te] = preds[("outer", k)]
        fold[te] = k
        p_inner = None
        if inner["mode"] == "pairs":
            p_inner = np.full(n, np.nan)
            for j in range(plan.n_splits):
                if j == k:
                    continue
                a, b = min(j, k), max(j, k)
                both = preds[("pair", a, b)]  # predictions for tests[a] then tests[b]
                p_inner[tests[j]] = both[:len(tests[a])] if j == a else both[len(tests[a]):]
            p_inner = p_inner[tr]
        elif inner["plans"].get(k) is not None:
            ip = inner["plans"][k]
            p_inner = np.full(len(tr), np.nan)
            for i, (_, ite) in enumerate(ip.folds):
                p_inner[ite] = preds[("inner", k, i)]
        if k in inner.get("notes", {}):
            notes.append(f"fold {k}: {inner['notes'][k]}")
        for r in rules:
            fold_thr[r].append(0.5 if p_inner is None else
                               float(threshold_fn(y[tr], p_inner, rule=r, target_recall=target_recall)))
    thr = {r: np.array(fold_thr[r])[fold] for r in rules}
    return SubjectCV(plan=plan, p_all=p, fold=fold, thresholds=thr, fold_thresholds=fold_thr,
                     inner=inner["mode"], notes=notes)


def holdout_tasks(train, test, y, groups, *, inner_splits: int = 3, seed: int = 0) -> tuple[list[FitTask], dict]:
    """Fits for a fixed train -> test split (the official phase): the final model, and an inner
    subject-disjoint CV on ``train`` for the threshold."""
    y = _as_labels(y)
    groups = np.asarray(groups).astype(str)
    train, test = np.asarray(train), np.asarray(test)
    tasks = [FitTask(("holdout",), train, test)]
    info = {"plan": None, "note": ""}
    if inner_splits:
        try:
            ip = plan_subject_folds(groups[train], y[train], inner_splits, seed, what="inner threshold folds")
        except BlastscanError as exc:
            info["note"] = f"threshold left at 0.5: {exc.why}"
        else:
            info["plan"] = ip
            tasks += [FitTask(("holdout_inner", i), train[itr], train[ite]) for i, (itr, ite) in enumerate(ip.folds)]
    return tasks, info


def assemble_holdout(train, info: dict, preds: Mapping[tuple, np.ndarray], y, *,
                     rules: Sequence[str] = ("recall", "f1"), target_recall: float = 0.90,
                     threshold_fn: Callable | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Test predictions and thresholds (chosen on ``train`` only) of :func:`holdout_tasks`."""
    threshold_fn = threshold_fn or choose_threshold
    y = _as_labels(y)
    train = np.asarray(train)
    thresholds = {r: 0.5 for r in rules}
    if info["plan"] is not None:
        p_inner = np.full(len(train), np.nan)
        for i, (_, ite) in enumerate(info["plan"].folds):
            p_inner[ite] = preds[("holdout_inner", i)]
        thresholds = {r: float(threshold_fn(y[train], p_inner, rule=r, target_recall=target_recall)) for r in rules}
    return preds[("holdout",)], thresholds


def _run_all(spec, params, X, y, groups, tasks: Sequence[FitTask], seed: int, n_jobs: int | None) -> dict:
    if n_jobs == 1 or len(tasks) <= 1:
        return {t.key: run_fit(spec, params, X, y, groups, t, seed) for t in tasks}
    from joblib import Parallel, delayed

    out = Parallel(n_jobs=n_jobs)(delayed(run_fit)(spec, params, X, y, groups, t, seed) for t in tasks)
    return {t.key: p for t, p in zip(tasks, out)}


def subject_cv(spec, params, X, y, groups, *, n_splits: int = 5, seed: int = 0, inner_splits: int = 3,
               target_recall: float = 0.90, n_jobs: int | None = 1, threshold_fn: Callable | None = None,
               plan: FoldPlan | None = None) -> SubjectCV:
    """Subject-disjoint CV of one classifier on one feature matrix, with training-only thresholds.

    Parameters
    ----------
    spec, params : see :func:`make_classifier`
    X, y, groups : arrays
    n_splits, seed : folds from :func:`plan_subject_folds` (unless ``plan`` is given)
    inner_splits : int
        Folds of the inner CV when the pair scheme is not possible; 0 skips thresholds (0.5).
    n_jobs : int
        Parallel fits (joblib).
    threshold_fn : callable, optional
        Replaces :func:`choose_threshold` (for tests).

    Notes
    -----
    Cost with K folds: K + K(K-1)/2 fits (15 for K = 5), see the comment above :class:`FitTask`.
    """
    X = np.asarray(X)
    y = _as_labels(y)
    groups = np.asarray(groups).astype(str)
    plan = plan or plan_subject_folds(groups, y, n_splits, seed)
    tasks, inner = subject_cv_tasks(plan, y, groups, inner_splits=inner_splits, seed=seed)
    preds = _run_all(spec, params, X, y, groups, tasks, seed, n_jobs)
    return assemble_subject_cv(plan, inner, preds, y, target_recall=target_recall, threshold_fn=threshold_fn)
