"""Train one model on a whole dataset and wrap it as a scoring bundle: ``blastscan train``.

The decision threshold is chosen on out-of-fold P(ALL) from a subject-disjoint CV on the same training
data (never on data to be scored); the out-of-fold metrics at that threshold are recorded as the
bundle's training metrics, named by their split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from blastscan.bundle import FORMAT, FORMAT_VERSION, Bundle, save_bundle
from blastscan._io import check_writable_file
from blastscan.dataset.subjects import require_subjects
from blastscan.errors import BlastscanError
from blastscan.evaluation import (EvalSettings, FoldPlan, choose_threshold, compute_metrics, fit_model, fit_predict,
                                  make_classifier, plan_subject_folds)
from blastscan.features.featureset import FeatureMatrix, FeatureSet
from blastscan.options import clean_options, params_for

__all__ = ["TRAIN_SETTINGS", "train", "train_bundle", "labelled_rows", "TrainingData"]

#: Train's defaults: 5 inner folds choose the threshold (compare's outer folds do that job there).
TRAIN_SETTINGS = EvalSettings(inner_folds=5)


def labelled_rows(manifest_df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The manifest rows labelled ``all``/``hem`` (labels lower-cased), each with a split ``group``, a
    ``subject``, a ``source_split`` and a ``_row`` position; and the number of unlabelled rows left out.

    ``group`` is the split unit; it falls back to the subject, then to the image itself, so nothing is
    ungrouped.
    """
    df = manifest_df.copy()
    label = df["label"].astype("string").str.lower()
    keep = label.isin(["all", "hem"]).fillna(False).to_numpy(dtype=bool)
    df = df[keep].copy()
    df["label"] = label[keep].astype(str).to_numpy()
    n_unlabelled = int((~keep).sum())
    missing = pd.Series(pd.NA, index=df.index, dtype="string")
    subject = df["subject"].astype("string") if "subject" in df else missing
    group = df["group"].astype("string") if "group" in df else missing
    group = group.fillna(subject).fillna("img:" + df["sha256"].astype("string").str[:12])
    df["group"] = group.astype(str).to_numpy()
    df["subject"] = subject.fillna(df["group"]).astype(str).to_numpy()
    if "source_split" not in df:
        df["source_split"] = ""
    df["source_split"] = df["source_split"].astype("string").fillna("").astype(str).to_numpy()
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df))
    return df, n_unlabelled


@dataclass
class TrainingData:
    """The labelled cells a model is fitted on, as arrays, with what they rest on."""

    fm: FeatureMatrix
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    subjects: np.ndarray

    @classmethod
    def from_features(cls, fm: FeatureMatrix) -> "TrainingData":
        rows = fm.rows
        return cls(fm=fm, X=fm.X.astype(np.float64),  # fitted as scored (see bundle.p_all)
                   y=(rows["label"] == "all").to_numpy().astype(int),
                   groups=rows["group"].to_numpy().astype(str), subjects=rows["subject"].to_numpy().astype(str))

    def record(self, dataset: str | None) -> dict[str, Any]:
        """The ``training_data`` entry of a bundle."""
        from blastscan import provenance as prov

        y, s = self.y, self.subjects
        return {"dataset": str(dataset) if dataset is not None else None,
                "manifest_sha256": prov.manifest_hash(self.fm.rows),
                "n_images": int(len(y)), "n_all": int(y.sum()), "n_hem": int(len(y) - y.sum()),
                "n_subjects": int(len(set(s))), "n_groups": int(len(set(self.groups))),
                "n_subjects_all": int(len(set(s[y == 1]))), "n_subjects_hem": int(len(set(s[y == 0]))),
                "n_dropped": int(len(self.fm.dropped))}


@dataclass
class _Fitted:
    model: Any
    threshold: float
    metrics: dict | None
    split: str
    plan: FoldPlan | None
    notes: list[str] = field(default_factory=list)
    operating_point_bootstrap: dict | None = None  # what blast-fraction intervals need (issue 23)


def _fit_with_threshold(data: TrainingData, classifier, params: Mapping[str, Any], settings: EvalSettings,
                        progress: bool) -> _Fitted:
    """Out-of-fold P(ALL) on subject-disjoint folds (for the threshold and training metrics), then the
    final fit on every row."""
    from tqdm.auto import tqdm

    notes: list[str] = []
    try:
        plan = plan_subject_folds(data.groups, data.y, settings.inner_folds, settings.seed, what="threshold folds")
    except BlastscanError as exc:
        plan = None
        notes.append(f"threshold left at 0.5 and no training metrics: {exc.why}")
    X, y, groups, seed = data.X, data.y, data.groups, settings.seed
    bar = tqdm(total=(plan.n_splits if plan else 0) + 1, desc="train", unit="fit", disable=not progress,
               dynamic_ncols=True)
    try:
        oof = None
        if plan is not None:
            notes += plan.notes
            oof = np.full(len(y), np.nan)
            for tr, te in plan.folds:
                oof[te] = fit_predict(classifier, params, X, y, groups, tr, te, seed)
                bar.update(1)
        est = make_classifier(classifier, params, seed)
        est = fit_model(est, X, y, groups) or est
        bar.update(1)
    finally:
        bar.close()
    if oof is None:
        return _Fitted(est, 0.5, None, "none (too few subjects for a subject-disjoint split)", None, notes)
    threshold = float(choose_threshold(y, oof, rule=settings.threshold_rule, target_recall=settings.target_recall))
    metrics = compute_metrics(y, oof, threshold, subjects=data.subjects, groups=groups)
    split = f"training metrics, subject-disjoint {plan.n_splits}-fold OOF on the training data"
    from blastscan.evaluation.patient import operating_point_bootstrap

    boot = operating_point_bootstrap(y, oof, data.subjects, threshold, seed=seed)
    return _Fitted(est, threshold, metrics, split, plan, notes, boot)


#: Feature tables wider than this (block activations) keep no reference cells for ``view`` in the bundle.
WIDE_FEATURES = 20_000


def _inputs(classifier, feature_set: str) -> str:
    """The feature set the model reads (``finetune`` on ``inception_v3``: the cached mixed8 activations)."""
    from blastscan.classifiers import classifier_inputs

    found = classifier_inputs(classifier, feature_set)
    if found is None:
        raise BlastscanError(f"classifier '{classifier}'", f"does not run on the '{feature_set}' features")
    return found


def train_bundle(
    manifest_df: pd.DataFrame,
    feature_set: str,
    classifier,
    store: str | os.PathLike,
    *,
    params: Mapping[str, Any] | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    settings: EvalSettings = TRAIN_SETTINGS,
    dataset: str | None = None,
    progress: bool = True,
    tune: bool = False,
) -> Bundle:
    """Fit ``classifier`` on every labelled row of ``manifest_df`` and wrap it as a :class:`Bundle`.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest; unlabelled rows are ignored.
    feature_set : str
        E.g. ``"handcrafted"`` or ``"handcrafted+inception_v3"``; features must be in ``store``.
    classifier : str, callable or estimator
        A name from :func:`blastscan.classifiers.available_classifiers` (or see
        :func:`blastscan.evaluation.make_classifier`).
    store : path
        Feature store holding the features.
    params : dict, optional
        Classifier parameters.
    extractor_options : dict, optional
        ``weights_dir``, ``input_size``, ... as given to ``extract``.
    settings : EvalSettings
        Seed, threshold rule, target recall and ``inner_folds`` (folds of the subject-disjoint CV that
        picks the threshold; fewer when a class has fewer subjects).
    dataset : str, optional
        Recorded, and used in the hint of a missing-features error.
    progress : bool
        Progress bar over the fits on stderr.
    tune : bool
        Search the classifier's small grid on subject-grouped inner folds of the training data (inside
        every threshold fold too); the values chosen for the final model are recorded in the bundle.
    """
    params = dict(params or {})
    leaky = require_subjects(manifest_df, settings.per_image_split, "train")
    rows, _ = labelled_rows(manifest_df)
    if len(rows) == 0:
        raise BlastscanError(dataset or "manifest", "no labelled images (labels all/hem) to train on")
    fs = FeatureSet(_inputs(classifier, feature_set), extractor_options or {})
    from blastscan.classifiers.finetune import share_weights_dir

    share_weights_dir(classifier if isinstance(classifier, str) else [], extractor_options)
    fm = fs.read(rows, store, dataset_hint=dataset or "DATASET")
    if len(fm.rows) == 0:
        raise BlastscanError("--features", f"no labelled image has '{feature_set}' features")
    data = TrainingData.from_features(fm)
    if len(np.unique(data.y)) < 2:
        raise BlastscanError(dataset or "manifest", "the training data holds one class only (need ALL and HEM)")
    spec, fit_params = classifier, params
    if tune:
        from blastscan.evaluation.tuning import Tuned

        spec, fit_params = Tuned(classifier=classifier, params=params), {}
    fitted = _fit_with_threshold(data, spec, fit_params, settings, progress)
    if leaky:  # every record of these numbers says so
        fitted.split = f"{leaky}; {fitted.split}"
    metadata = _metadata(fs, fm, data, fitted, classifier, params, settings, extractor_options, dataset)
    if tune:
        metadata["tuned"] = {"grid": "blastscan.evaluation.tuning.GRIDS", "chosen": fitted.model.best_params_,
                             "scores": [[c, s] for c, s in fitted.model.scores_]}
    metadata["leaky_split"] = leaky
    bundle = Bundle(model=fitted.model, metadata=metadata)
    # what `blastscan view` shows beside a cell: training distributions, importances, reference cells
    from blastscan.pipelines.view_detail import training_reference

    # block activations (finetune: 81,920 columns) keep no reference cells: 240 of them would weigh 78 MB
    wide = data.X.shape[1] > WIDE_FEATURES
    bundle.extras["view"] = training_reference(fitted.model, data.X, fm.rows, list(fm.feature_names),
                                               seed=settings.seed, **({"max_cells": 0} if wide else {}))
    return bundle


def _metadata(fs: FeatureSet, fm: FeatureMatrix, data: TrainingData, fitted: _Fitted, classifier, params,
              settings: EvalSettings, extractor_options, dataset) -> dict:
    from blastscan import provenance as prov

    versions = prov.library_versions()
    name = classifier if isinstance(classifier, str) else getattr(classifier, "__name__", type(classifier).__name__)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "blastscan_version": versions.get("blastscan"),
        "created": prov.timestamp(),
        "git_revision": prov.git_revision(),
        "feature_set": fs.spec,
        "feature_names": list(fm.feature_names),
        "n_features": int(data.X.shape[1]),
        "extractors": fs.specs(),
        "extractor_options": clean_options(extractor_options),
        "classifier": name,
        "params": params,
        "seed": int(settings.seed),
        "threshold": {"value": fitted.threshold, **settings.threshold_record(),
                      "rule_text": settings.rule_text(on="out-of-fold P(ALL)"), "chosen_on": fitted.split},
        "training_metrics": {"split": fitted.split, "n_splits": fitted.plan.n_splits if fitted.plan else 0,
                             "metrics": fitted.metrics, "notes": fitted.notes,
                             "operating_point_bootstrap": fitted.operating_point_bootstrap},
        "training_data": data.record(dataset),
        "versions": versions,
    }
    return prov.to_jsonable(metadata)


def train(
    dataset: str | os.PathLike,
    feature_set: str,
    classifier: str,
    store: str | os.PathLike,
    *,
    params: Sequence[str] | Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    settings: EvalSettings = TRAIN_SETTINGS,
    jobs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    tune: bool = False,
    subject_pattern: str | None = None,
) -> Bundle:
    """Fit ``classifier`` on ``feature_set`` features of every labelled image of ``dataset``.

    Builds the manifest, computes the features the store lacks, fits (:func:`train_bundle`) and, with
    ``out``, saves the bundle and its ``.json`` sidecar.

    Parameters
    ----------
    dataset : path
        Anything :func:`blastscan.dataset.build_manifest` reads.
    feature_set, classifier : str
        E.g. ``"handcrafted"`` and ``"svm"``.
    store : path
        Feature store (missing features are computed into it).
    params : list of "clf.name=value" or dict
        Parameters of ``classifier`` (``["svm.C=10"]``, ``{"svm": {"C": 10}}`` or ``{"C": 10}``).
    params_file : path, optional
        JSON file of parameters per classifier (only ``classifier``'s entry is used; ``params`` win).
    out : path, optional
        Write the bundle (and its ``.json`` sidecar) here.
    extractor_options, settings
        See :func:`train_bundle`.
    jobs : int, optional
        Processes for reading images and per-image features.
    echo : callable
        Where progress lines go.
    subject_pattern : str, optional
        Regex taking subjects from file names (see :func:`blastscan.dataset.build_manifest`).
    """
    from blastscan.dataset import build_manifest, inspect_cache, labelled

    clf_params = params_for(classifier, params, params_file)
    if out is not None:
        check_writable_file(out, "--out")
    manifest = build_manifest(dataset, jobs=jobs, progress=progress, cache=inspect_cache(store),
                              subject_pattern=subject_pattern)
    require_subjects(manifest.df, settings.per_image_split, "train")  # before any feature is computed
    if len(manifest.problems):
        echo(f"{len(manifest.problems)} problems in {dataset} (see `blastscan data`); e.g. {manifest.problems[0]}")
    data = labelled(manifest.df)
    if len(data) == 0:
        raise BlastscanError(str(dataset), "no labelled images (labels all/hem) to train on")
    summary = FeatureSet(_inputs(classifier, feature_set), extractor_options or {}).ensure(data, store, jobs=jobs,
                                                                                          progress=progress)
    echo(summary.format(max_failures=5))
    bundle = train_bundle(data, feature_set, classifier, store, params=clf_params,
                          extractor_options=extractor_options, settings=settings, dataset=str(dataset),
                          progress=progress, tune=tune)
    echo(bundle.summary())
    if out is not None:
        save_bundle(bundle, out)
        echo(f"bundle: {out} (+ {bundle.path.with_suffix('.json').name})")
    return bundle
