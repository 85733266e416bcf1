"""The shared work of a comparison grid: the labelled data and its feature matrices, the splits every
configuration shares, and one pool that runs every model fit of the grid."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from blastscan.errors import BlastscanError
from blastscan.evaluation import (EvalSettings, FitTask, FoldPlan, HoldoutPlan, InnerPlan, TaskKey, holdout_tasks,
                                  leaky_folds, plan_subject_folds, run_fit, subject_cv_tasks)
from blastscan.features.featureset import ExtractSummary, FeatureMatrix
from blastscan.parallel import executor
from blastscan.dataset import labelled_rows
from blastscan.evaluation.tuning import Tuned
from blastscan.pipelines.extract import features_for

__all__ = ["ConfigSpec", "CompareData", "SplitPlan", "GridRun", "prepare_data", "plan_splits", "run_grid",
           "add_votes", "vote_spec"]


@dataclass(frozen=True)
class ConfigSpec:
    """One configuration of the grid: a classifier on a feature set (a vote: on the union of its members')."""

    name: str
    feature_set: str
    classifier: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    members: tuple = ()  # a vote's member configuration names
    tune: bool = False  # search the classifier's grid on grouped inner folds of each training part
    aliases: tuple = ()  # names of configurations that are the same model as this one (run once, shown once)
    inputs: str = ""  # the feature set the fits read when not ``feature_set`` (finetune: cached activations)

    def spec(self):
        """What each fit builds: the classifier's name, or a :class:`~blastscan.evaluation.tuning.Tuned` one."""
        if not self.tune:
            return self.classifier
        return Tuned(classifier=self.classifier, params=dict(self.params))

    def fit_params(self) -> dict:
        return {} if self.tune else dict(self.params)


# ------------------------------------------------------------------------------------------------
@dataclass
class CompareData:
    """The labelled cells every configuration is evaluated on, and one feature matrix per feature set."""

    rows: pd.DataFrame
    Xs: dict[str, np.ndarray]
    matrices: dict[str, FeatureMatrix]
    y: np.ndarray
    groups: np.ndarray
    subjects: np.ndarray
    n_unlabelled: int
    notes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    extracted: list[ExtractSummary] = field(default_factory=list)


def prepare_data(manifest_df, feature_sets, classifiers, store, extractor_options, jobs, progress,
                 dataset, *, features_for=features_for, specs=None) -> CompareData:
    """Labelled rows, the features of each set (computing what the store lacks), restricted to the
    cells every set has. ``features_for`` gives one set's matrix (:func:`blastscan.pipelines.extract.features_for`
    by default; a test passes its own); it is given a set's
    :class:`~blastscan.features.featureset.FeatureSetSpec` where ``specs`` (by name)
    holds the one the command line parsed, else the name."""
    rows, n_unlabelled = labelled_rows(manifest_df)
    notes: list[str] = []
    if n_unlabelled:
        notes.append(f"{n_unlabelled} unlabelled image{'s' if n_unlabelled != 1 else ''} ignored")
    if len(rows) == 0:
        raise BlastscanError(dataset or "manifest", "no labelled images (labels all/hem) to evaluate")
    matrices, skipped, extracted = {}, [], []
    for fs in feature_sets:
        given = (specs or {}).get(fs, fs)
        summary, fm = features_for(rows, given, store, extractor_options=extractor_options, jobs=jobs,
                                   progress=progress, dataset_hint=dataset or "DATASET")
        if summary is not None:
            extracted.append(summary)
        if len(fm.dropped):
            reasons = fm.dropped["reason"].astype(str).value_counts().head(3)
            notes.append(f"{fs}: {len(fm.dropped)} images have no features and were left out "
                         f"({'; '.join(f'{n}x {r}' for r, n in reasons.items())})")
        if len(fm.rows) == 0:
            skipped += [{"name": f"{fs}/{c}", "feature_set": fs, "classifier": c,
                         "reason": f"no image has '{fs}' features"} for c in classifiers]
            continue
        matrices[fs] = fm
    if not matrices:
        raise BlastscanError("--features", "no feature set has features for any image")
    common = sorted(set.intersection(*(set(fm.rows["_row"].tolist()) for fm in matrices.values())))
    common_idx = np.array(common, dtype=int)
    if len(common_idx) < len(rows):
        notes.append(f"{len(rows) - len(common_idx)} labelled images lack features of at least one feature set; "
                     f"every configuration is evaluated on the same {len(common_idx)} images")
    rows = rows.iloc[common_idx].reset_index(drop=True)
    Xs = {}
    for fs, fm in matrices.items():
        pos = pd.Series(np.arange(len(fm.rows)), index=fm.rows["_row"].to_numpy())
        Xs[fs] = np.ascontiguousarray(fm.X[pos.loc[common_idx].to_numpy()])
    return CompareData(rows=rows, Xs=Xs, matrices=matrices, y=(rows["label"] == "all").to_numpy().astype(int),
                       groups=rows["group"].to_numpy().astype(str), subjects=rows["subject"].to_numpy().astype(str),
                       n_unlabelled=n_unlabelled, notes=notes, skipped=skipped, extracted=extracted)


# ------------------------------------------------------------------------------------------------
@dataclass
class SplitPlan:
    """The splits every configuration shares, and the fits each configuration needs for them."""

    plan: FoldPlan
    inner: InnerPlan
    holdout: HoldoutPlan | None
    leaky: list[tuple[np.ndarray, np.ndarray]]
    tasks: list[FitTask]
    notes: list[str]


def _official_split(data: CompareData, notes: list[str]):
    split = data.rows["source_split"].astype(str)
    train = np.flatnonzero(split.str.startswith("fold_").to_numpy())
    test = np.flatnonzero((split == "prelim").to_numpy())
    if len(train) == 0 or len(test) == 0:
        return None
    test_groups = set(data.rows["group"].iloc[test])
    overlap = data.rows["group"].iloc[train].isin(test_groups).to_numpy()
    if overlap.any():
        notes.append(f"official phase: {int(overlap.sum())} training-fold cells of subjects also in the "
                     "preliminary test were left out of its training set (subject-disjoint)")
        train = train[~overlap]
    if len(np.unique(data.y[train])) < 2:
        notes.append("official phase skipped: its training folds hold one class only")
        return None
    return train, test


def plan_splits(data: CompareData, settings: EvalSettings) -> SplitPlan:
    y, groups, seed = data.y, data.groups, settings.seed
    plan = plan_subject_folds(groups, y, settings.folds, seed)
    notes = list(plan.notes)
    leaky = leaky_folds(y, settings.leaky_folds, seed) if settings.leaky_folds else []
    official = _official_split(data, notes)
    tasks, inner = subject_cv_tasks(plan, y, groups, inner_splits=settings.inner_folds, seed=seed)
    holdout = None
    if official is not None:
        h_tasks, holdout = holdout_tasks(official[0], official[1], y, groups, inner_splits=settings.inner_folds,
                                         seed=seed)
        tasks += h_tasks
    tasks += [FitTask(TaskKey("leaky", i), tr, te) for i, (tr, te) in enumerate(leaky)]
    notes += inner.run_notes() + (holdout.run_notes() if holdout is not None else [])
    return SplitPlan(plan=plan, inner=inner, holdout=holdout, leaky=leaky, tasks=tasks, notes=notes)


# ------------------------------------------------------------------------------------------------
@dataclass
class GridRun:
    """Predictions of every fit, per configuration, with fit seconds and the first error of each."""

    preds: dict[str, dict[TaskKey, np.ndarray]]
    seconds: dict[str, float]
    errors: dict[str, str]
    wall_seconds: float
    chosen: dict[str, dict[int, dict]] = field(default_factory=dict)  # tuned: outer fold -> chosen values


def _task(name: str, spec, params, X, y, groups, task: FitTask, seed: int, one_thread: bool = False):
    """One unit of work for the pool: one model fit and its predictions."""
    t0 = time.perf_counter()
    if one_thread:
        # In a worker of a parallel grid: TensorFlow (FCN) reads these when it starts; joblib already limits
        # OpenMP/BLAS (XGBoost, numpy) to one thread per worker.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    info: dict = {}
    try:
        p = run_fit(spec, params, X, y, groups, task, seed, info)
    except BlastscanError as exc:
        return name, task.key, None, time.perf_counter() - t0, exc.why or str(exc), None
    return name, task.key, p, time.perf_counter() - t0, None, info.get("best_params")


def _run_tasks(tasks, jobs: int, seed: int):
    # in this process, a local loky pool or a Dask cluster (blastscan.parallel decides). Models
    # in a pool or on a cluster use one thread each: workers x many threads would oversubscribe.
    ex = executor(jobs)
    one_thread = ex.is_parallel(len(tasks))
    yield from ex.map_unordered(_task, [(*t, seed, one_thread) for t in tasks], one_thread=one_thread)


def run_grid(data: CompareData, splits: SplitPlan, configs: list[ConfigSpec], jobs: int, seed: int,
             progress: bool) -> GridRun:
    """Every fit of every (non-vote) configuration, through one pool."""
    configs = [c for c in configs if not c.members]
    tasks = [(c.name, c.spec(), c.fit_params(), data.Xs[c.inputs or c.feature_set], data.y, data.groups, t)
             for c in configs for t in splits.tasks]
    preds: dict[str, dict[TaskKey, np.ndarray]] = {c.name: {} for c in configs}
    seconds = {name: 0.0 for name in preds}
    errors: dict[str, str] = {}
    chosen: dict[str, dict[int, dict]] = {}
    bar = tqdm(total=len(tasks), desc="compare", unit="fit", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for name, key, p, secs, err, chose in _run_tasks(tasks, jobs, seed):
            bar.update(1)
            bar.set_postfix_str(name, refresh=False)
            seconds[name] += secs
            if err is not None:
                errors.setdefault(name, err)
            else:
                preds[name][key] = p
                if chose is not None and key.role == "outer":
                    chosen.setdefault(name, {})[key.a] = chose
    finally:
        bar.close()
    return GridRun(preds=preds, seconds=seconds, errors=errors, wall_seconds=time.perf_counter() - t0, chosen=chosen)


def vote_spec(members: list[ConfigSpec], data: CompareData) -> ConfigSpec:
    """The soft vote of ``members``: the classifier ``vote`` on the union of their feature sets, each member
    reading its own column ranges of that union (as :class:`~blastscan.classifiers.vote.SoftVote` does)."""
    widths, order = {}, []
    for m in members:
        for e in data.matrices[m.feature_set].extractors:
            if e["name"] not in widths:
                widths[e["name"]] = int(e["n_features"])
                order.append(e["name"])
    start, offsets = 0, {}
    for name in order:
        offsets[name] = (start, start + widths[name])
        start += widths[name]
    records = []
    for m in members:
        ranges = [list(offsets[e["name"]]) for e in data.matrices[m.feature_set].extractors]
        records.append({"feature_set": m.feature_set, "classifier": m.classifier, "params": dict(m.params),
                        "columns": ranges})
    name = "vote(" + "+".join(m.name for m in members) + ")"
    return ConfigSpec(name, "+".join(order), "vote", {"members": records}, tuple(m.name for m in members))


def add_votes(grid: GridRun, votes: list[ConfigSpec]) -> None:
    """Each vote's predictions: the mean of its members' for every fit (the same folds, seeds and rows as
    fitting :class:`~blastscan.classifiers.vote.SoftVote`, so nothing is fitted twice)."""
    for v in votes:
        failed = [m for m in v.members if m in grid.errors]
        if failed:
            grid.errors[v.name] = f"member {failed[0]} failed: {grid.errors[failed[0]]}"
            continue
        keys = grid.preds[v.members[0]].keys()
        grid.preds[v.name] = {k: np.mean([grid.preds[m][k] for m in v.members], axis=0) for k in keys}
        grid.seconds[v.name] = sum(grid.seconds[m] for m in v.members)
