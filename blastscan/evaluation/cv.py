"""A subject-disjoint CV as a list of independent model fits, so a whole grid can share one worker pool.

Each outer fold's threshold is chosen on out-of-fold predictions of its training part only; nothing
here ever looks at an outer test fold to make a choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import clone

from blastscan import parallel
from blastscan.classifiers import fit_classifier, get_classifier, predict_p_all
from blastscan.errors import BlastscanError
from blastscan.evaluation import decision
from blastscan.evaluation.calibration import apply_calibration
from blastscan.evaluation.settings import RULES, EvalSettings
from blastscan.evaluation.splits import FoldPlan, as_labels, plan_subject_folds, subject_folds

__all__ = ["make_classifier", "fit_model", "fit_predict", "oof_predict", "TaskKey", "FitTask", "run_fit",
           "keyed_fit", "InnerPlan", "HoldoutPlan", "subject_cv_tasks", "SubjectCV", "assemble_subject_cv",
           "holdout_tasks", "assemble_holdout", "subject_cv", "shipped_decision"]


# ------------------------------------------------------------------------------------------------
# one model
def make_classifier(spec, params: Mapping[str, Any] | None = None, seed: int = 0):
    """A fresh, unfitted estimator from a classifier name, a factory, or an estimator to clone.

    Names go through :func:`blastscan.classifiers.get_classifier`; a callable is called as
    ``spec(random_state=seed, **params)``; an estimator instance is cloned and given ``params``.
    """
    params = dict(params or {})
    if isinstance(spec, str):
        return get_classifier(spec, random_state=seed, **params)
    if isinstance(spec, type) or (callable(spec) and not hasattr(spec, "fit")):
        return spec(random_state=seed, **params)
    est = clone(spec)
    return est.set_params(**params) if params else est


def fit_model(est, X, y, groups):
    # fit_classifier is the one way to fit: it hands groups to models that split internally (SVM
    # calibration, FCN early stopping) so even their inner splits are subject-disjoint.
    return fit_classifier(est, X, y, groups=groups)


def fit_predict(spec, params, X, y, groups, train, test, seed: int = 0, info: dict | None = None) -> np.ndarray:
    """Fit a fresh classifier on ``train`` rows and return P(ALL) for ``test`` rows; ``info`` (when given)
    receives what the fit chose (``best_params_`` of a tuned model)."""
    est = make_classifier(spec, params, seed)
    est = fit_model(est, X[train], y[train], groups[train]) or est
    if info is not None:
        final = est.steps[-1][1] if hasattr(est, "steps") else est
        if hasattr(final, "best_params_"):
            info["best_params"] = dict(final.best_params_)
    return predict_p_all(est, X[test])


def oof_predict(classifier_name, params, X, y, groups, n_splits: int = EvalSettings.folds, seed: int = 0, *,
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
    y = as_labels(y)
    groups = np.asarray(groups).astype(str)
    folds = subject_folds(groups, y, n_splits, seed) if folds is None else folds
    p = np.full(len(y), np.nan)
    for tr, te in folds:
        p[te] = fit_predict(classifier_name, params, X, y, groups, tr, te, seed)
    return p


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
class TaskKey:
    """The role of one fit: ``outer`` (fold ``a``), ``pair`` (folds ``a`` < ``b`` left out), ``inner``
    (outer fold ``a``, inner fold ``b``), ``holdout``, ``holdout_inner`` (inner fold ``a``), ``leaky``
    (fold ``a``). Hashable, so predictions are kept in a dict by key."""

    role: str
    a: int = -1
    b: int = -1


@dataclass(frozen=True)
class FitTask:
    """One model fit: train on ``train`` rows, predict P(ALL) for ``predict`` rows; ``key`` says its role."""

    key: TaskKey
    train: np.ndarray
    predict: np.ndarray


@dataclass
class InnerPlan:
    """How each outer fold's threshold CV is made: ``pairs`` (over the other K-1 outer folds) or
    ``nested`` (its own folds in ``plans``; ``None`` where none is possible, with the reason in ``notes``)."""

    mode: str
    plans: dict[int, FoldPlan | None] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)

    def run_notes(self) -> list[str]:
        """What the inner CVs had to adapt, once per run (it depends on the data, not the model)."""
        if self.mode != "nested":
            return []
        out = [f"outer fold {k}: {n}" for k, ip in self.plans.items() for n in (ip.notes if ip else [])]
        return out + [f"outer fold {k}: {n}" for k, n in self.notes.items()]


@dataclass
class HoldoutPlan:
    """A fixed train -> test split (the official phase) and the inner CV that picks its threshold."""

    train: np.ndarray
    test: np.ndarray
    plan: FoldPlan | None = None
    note: str = ""

    def run_notes(self) -> list[str]:
        out = [f"official phase: {n}" for n in (self.plan.notes if self.plan else [])]
        return out + ([f"official phase: {self.note}"] if self.note else [])


def run_fit(spec, params, X, y, groups, task: FitTask, seed: int = 0, info: dict | None = None) -> np.ndarray:
    """Execute a :class:`FitTask`; returns P(ALL) of ``task.predict`` rows (same order)."""
    return fit_predict(spec, params, X, y, groups, task.train, task.predict, seed, info)


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


def subject_cv_tasks(plan: FoldPlan, y, groups, *, inner_splits: int = EvalSettings.inner_folds,
                     seed: int = 0) -> tuple[list[FitTask], InnerPlan]:
    """The fits a subject-disjoint CV with training-only thresholds needs, and how its inner CVs are made."""
    y = as_labels(y)
    groups = np.asarray(groups).astype(str)
    tasks = [FitTask(TaskKey("outer", k), tr, te) for k, (tr, te) in enumerate(plan.folds)]
    if inner_splits and _pairs_possible(plan, y, inner_splits):
        tests = [te for _, te in plan.folds]
        for a in range(plan.n_splits):
            for b in range(a + 1, plan.n_splits):
                train = np.sort(np.concatenate([tests[i] for i in range(plan.n_splits) if i not in (a, b)]))
                tasks.append(FitTask(TaskKey("pair", a, b), train, np.concatenate([tests[a], tests[b]])))
        return tasks, InnerPlan("pairs")
    inner = InnerPlan("nested")
    for k, (tr, _) in enumerate(plan.folds):
        inner.plans[k] = None
        if not inner_splits:
            continue
        try:
            ip = plan_subject_folds(groups[tr], y[tr], inner_splits, seed, what="inner threshold folds")
        except BlastscanError as exc:
            inner.notes[k] = f"threshold left at 0.5: {exc.why}"
            continue
        inner.plans[k] = ip
        tasks += [FitTask(TaskKey("inner", k, i), tr[itr], tr[ite]) for i, (itr, ite) in enumerate(ip.folds)]
    return tasks, inner


@dataclass
class SubjectCV:
    """Pooled out-of-fold result of a subject-disjoint CV.

    Attributes
    ----------
    plan : FoldPlan
    p_all : ndarray
        Out-of-fold calibrated P(ALL) of every cell (each fold's model, then that fold's calibration map,
        fitted on its training part's inner out-of-fold P(ALL)).
    fold : ndarray of int
        The outer fold that tested each cell.
    thresholds : dict
        rule -> per-cell threshold (the threshold of the cell's fold), on calibrated P(ALL).
    fold_thresholds : dict
        rule -> list of one threshold per fold, each chosen on that fold's training part only.
    inner : str
        How thresholds were chosen (``"pairs"``: inner CV over the other K-1 outer folds; ``"nested"``).
    notes : list of str
    inner_p_all : dict
        fold -> calibrated out-of-fold P(ALL) of that fold's training part (what its threshold was chosen on).
    p_raw : ndarray
        The models' P(ALL) before calibration.
    calibrations : list
        One calibration map per fold (None where it had no inner CV).
    target_thresholds : dict
        target ALL recall -> one threshold per fold (the recall rule at that target).
    raw_fold_thresholds : dict
        rule -> per-fold thresholds on raw P(ALL) (the leaky view has no calibration map).
    """

    plan: FoldPlan
    p_all: np.ndarray
    fold: np.ndarray
    thresholds: dict[str, np.ndarray]
    fold_thresholds: dict[str, list[float]]
    inner: str
    notes: list[str]
    inner_p_all: dict[int, np.ndarray] = field(default_factory=dict)
    p_raw: np.ndarray | None = None
    calibrations: list = field(default_factory=list)
    target_thresholds: dict[float, list[float]] = field(default_factory=dict)
    raw_fold_thresholds: dict[str, list[float]] = field(default_factory=dict)

    def at_target(self, target: float) -> np.ndarray:
        """Per-cell thresholds of the recall rule at ``target`` (each cell's fold's)."""
        return np.array(self.target_thresholds[round(float(target), 4)])[self.fold]


def _inner_predictions(plan: FoldPlan, inner: InnerPlan, preds: Mapping[TaskKey, np.ndarray], k: int,
                       n: int) -> np.ndarray | None:
    """Out-of-fold P(ALL) on the training part of outer fold ``k`` (None when it has no inner CV)."""
    tests = [te for _, te in plan.folds]
    tr = plan.folds[k][0]
    if inner.mode == "pairs":
        p_inner = np.full(n, np.nan)
        for j in range(plan.n_splits):
            if j == k:
                continue
            a, b = min(j, k), max(j, k)
            both = preds[TaskKey("pair", a, b)]  # predictions for tests[a] then tests[b]
            p_inner[tests[j]] = both[:len(tests[a])] if j == a else both[len(tests[a]):]
        return p_inner[tr]
    ip = inner.plans.get(k)
    if ip is None:
        return None
    p_inner = np.full(len(tr), np.nan)
    for i, (_, ite) in enumerate(ip.folds):
        p_inner[ite] = preds[TaskKey("inner", k, i)]
    return p_inner


def assemble_subject_cv(plan: FoldPlan, inner: InnerPlan, preds: Mapping[TaskKey, np.ndarray], y, *,
                        groups=None, rules: Sequence[str] = tuple(RULES),
                        target_recall: float = EvalSettings.target_recall, targets: Sequence[float] = (),
                        threshold_fn: Callable | None = None, calibrate: bool = True) -> SubjectCV:
    """Pool the fits of :func:`subject_cv_tasks` (``preds[key]`` = predictions of that task): each fold's
    calibration map and thresholds come from :func:`~blastscan.evaluation.decision.decide` on out-of-fold
    predictions of its training part only, and are applied to its test fold."""
    y = as_labels(y)
    groups = None if groups is None else np.asarray(groups).astype(str)
    n = len(y)
    p = np.full(n, np.nan)
    p_raw = np.full(n, np.nan)
    fold = np.full(n, -1)
    notes = list(plan.notes)
    fold_thr = {r: [] for r in rules}
    raw_thr = {r: [] for r in rules}
    target_thr = {round(float(t), 4): [] for t in targets}
    inner_p, cals = {}, []
    for k, (tr, te) in enumerate(plan.folds):
        p_raw[te] = preds[TaskKey("outer", k)]
        fold[te] = k
        p_inner = _inner_predictions(plan, inner, preds, k, n)
        if k in inner.notes:
            notes.append(f"fold {k}: {inner.notes[k]}")
        d = decision.decide(y[tr], p_inner, groups=None if groups is None else groups[tr], rules=rules, target_recall=target_recall, targets=targets,
                   threshold_fn=threshold_fn, calibrate=calibrate)
        if d.p_oof is not None:
            inner_p[k] = d.p_oof
        cals.append(d.calibration)
        p[te] = apply_calibration(p_raw[te], d.calibration)
        for r in rules:
            fold_thr[r].append(d.thresholds[r])
            raw_thr[r].append(d.raw_thresholds[r])
        for t in target_thr:
            target_thr[t].append(d.targets[t])
    thr = {r: np.array(fold_thr[r])[fold] for r in rules}
    return SubjectCV(plan=plan, p_all=p, fold=fold, thresholds=thr, fold_thresholds=fold_thr,
                     inner=inner.mode, notes=notes, inner_p_all=inner_p, p_raw=p_raw, calibrations=cals,
                     target_thresholds=target_thr, raw_fold_thresholds=raw_thr)


def holdout_tasks(train, test, y, groups, *, inner_splits: int = EvalSettings.inner_folds,
                  seed: int = 0) -> tuple[list[FitTask], HoldoutPlan]:
    """Fits for a fixed train -> test split (the official phase): the final model, and an inner
    subject-disjoint CV on ``train`` for the threshold."""
    y = as_labels(y)
    groups = np.asarray(groups).astype(str)
    info = HoldoutPlan(np.asarray(train), np.asarray(test))
    tasks = [FitTask(TaskKey("holdout"), info.train, info.test)]
    if inner_splits:
        tr = info.train
        try:
            info.plan = plan_subject_folds(groups[tr], y[tr], inner_splits, seed, what="inner threshold folds")
        except BlastscanError as exc:
            info.note = f"threshold left at 0.5: {exc.why}"
        else:
            tasks += [FitTask(TaskKey("holdout_inner", i), tr[itr], tr[ite])
                      for i, (itr, ite) in enumerate(info.plan.folds)]
    return tasks, info


def assemble_holdout(info: HoldoutPlan, preds: Mapping[TaskKey, np.ndarray], y, *,
                     groups=None, rules: Sequence[str] = tuple(RULES),
                     target_recall: float = EvalSettings.target_recall, threshold_fn: Callable | None = None,
                     calibrate: bool = True) -> tuple[np.ndarray, dict[str, float]]:
    """Calibrated test predictions and thresholds of :func:`holdout_tasks` (calibration map and thresholds
    from :func:`~blastscan.evaluation.decision.decide` on the training part's inner predictions only)."""
    y = as_labels(y)
    train = info.train
    p_inner = None
    if info.plan is not None:
        p_inner = np.full(len(train), np.nan)
        for i, (_, ite) in enumerate(info.plan.folds):
            p_inner[ite] = preds[TaskKey("holdout_inner", i)]
    d = decision.decide(y[train], p_inner, groups=None if groups is None else np.asarray(groups).astype(str)[train],
                        rules=rules, target_recall=target_recall, threshold_fn=threshold_fn,
               calibrate=calibrate)
    return apply_calibration(preds[TaskKey("holdout")], d.calibration), dict(d.thresholds)


def keyed_fit(spec, params, X, y, groups, task: FitTask, seed: int = 0) -> tuple[TaskKey, np.ndarray]:
    """``(task.key, run_fit(...))``: a fit that says which task it was (a pool returns results unordered)."""
    return task.key, run_fit(spec, params, X, y, groups, task, seed)


def _run_all(spec, params, X, y, groups, tasks: Sequence[FitTask], seed: int, n_jobs: int | None) -> dict:
    if n_jobs in (1, None) or len(tasks) <= 1:
        return {t.key: run_fit(spec, params, X, y, groups, t, seed) for t in tasks}
    jobs = (os.cpu_count() or 1) if n_jobs < 1 else n_jobs
    fits = [(spec, params, X, y, groups, t, seed) for t in tasks]
    return dict(parallel.executor(jobs).map_unordered(keyed_fit, fits, one_thread=True))


def subject_cv(spec, params, X, y, groups, *, n_splits: int = EvalSettings.folds, seed: int = EvalSettings.seed,
               inner_splits: int = EvalSettings.inner_folds, target_recall: float = EvalSettings.target_recall,
               n_jobs: int | None = 1, threshold_fn: Callable | None = None,
               plan: FoldPlan | None = None, targets: Sequence[float] = (), calibrate: bool = True) -> SubjectCV:
    """Subject-disjoint CV of one classifier on one feature matrix, with training-only thresholds.

    Parameters
    ----------
    spec, params : see :func:`make_classifier`
    X, y, groups : arrays
    n_splits, seed : folds from :func:`plan_subject_folds` (unless ``plan`` is given)
    inner_splits : int
        Folds of the inner CV when the pair scheme is not possible; 0 skips thresholds (0.5).
    n_jobs : int
        Parallel fits, through :func:`blastscan.parallel.executor` (1 or None: in this process; -1: one
        per CPU; inside a Dask :func:`~blastscan.parallel.session`: on its cluster).
    threshold_fn : callable, optional
        Replaces :func:`~blastscan.evaluation.thresholds.choose_threshold` (for tests).
    targets : target ALL recalls whose per-fold thresholds are also chosen (operating points)
    calibrate : bool
        Calibrate each fold's P(ALL) on its training part's inner out-of-fold predictions.

    Notes
    -----
    Cost with K folds: K + K(K-1)/2 fits (15 for K = 5), see the comment above :class:`FitTask`.
    """
    X = np.asarray(X)
    y = as_labels(y)
    groups = np.asarray(groups).astype(str)
    plan = plan or plan_subject_folds(groups, y, n_splits, seed)
    tasks, inner = subject_cv_tasks(plan, y, groups, inner_splits=inner_splits, seed=seed)
    preds = _run_all(spec, params, X, y, groups, tasks, seed, n_jobs)
    return assemble_subject_cv(plan, inner, preds, y, groups=groups, target_recall=target_recall,
                               threshold_fn=threshold_fn, targets=targets, calibrate=calibrate)


def shipped_decision(spec, params, X, y, groups, *, n_splits: int, seed: int, target_recall: float,
                     targets: Sequence[float] = (), progress: Callable[[], Any] | None = None):
    """:func:`~blastscan.evaluation.decision.decide` on an inner subject-disjoint CV over all of ``X`` (the
    training subjects of a shipped model). Returns ``(decision, plan)``; ``plan`` None (thresholds 0.5, no
    calibration) when no subject-disjoint split exists, the reason then in ``decision.note``.

    ``progress`` is called after each fit.
    """
    y = as_labels(y)
    groups = np.asarray(groups).astype(str)
    try:
        plan = plan_subject_folds(groups, y, n_splits, seed, what="threshold folds")
    except BlastscanError as exc:
        d = decision.decide(y, None, groups=groups, target_recall=target_recall, targets=targets)
        d.note = f"threshold left at 0.5, no calibration: {exc.why}"
        return d, None
    oof = np.full(len(y), np.nan)
    for tr, te in plan.folds:
        oof[te] = fit_predict(spec, params, X, y, groups, tr, te, seed)
        if progress:
            progress()
    return decision.decide(y, oof, groups=groups, target_recall=target_recall, targets=targets), plan
