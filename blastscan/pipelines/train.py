"""Train one model on a whole dataset and wrap it as a scoring bundle: ``blastscan train``.

The decision threshold and the calibration map of P(ALL) come from the procedure ``compare`` measures per
outer fold (:func:`blastscan.evaluation.decision.decide` on grouped out-of-fold P(ALL) of an inner
subject-disjoint CV), here run over all training subjects. What the bundle says about its operating point
(ALL recall and specificity, with subject-bootstrap intervals) is the outer-fold result of that procedure on
subjects it never saw: ``train`` runs the outer CV itself (the same folds and fits ``compare`` would run for
this one configuration); ``export`` copies it from its compare run. Never the in-sample numbers of the
threshold's own out-of-fold predictions (those meet the target by construction).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from blastscan import provenance as prov
from blastscan._io import check_writable_file
from blastscan.bundle import FORMAT, FORMAT_VERSION, Bundle, save_bundle
from blastscan.bundle.data_only import SUFFIX
from blastscan.bundle.reference import training_reference
from blastscan.classifiers import classifier_inputs
from blastscan.classifiers.finetune import share_weights_dir
from blastscan.dataset import labelled, labelled_rows
from blastscan.dataset.subjects import require_subjects
from blastscan.errors import BlastscanError
from blastscan.evaluation import (EvalSettings, FoldPlan, bootstrap_ci, compute_metrics, fit_model, make_classifier,
                                  plan_subject_folds, subject_cv)
from blastscan.evaluation.cv import shipped_decision
from blastscan.evaluation.decision import (decide, operating_targets, shipped_inner_splits, spread_note,
                                          threshold_spread)
from blastscan.evaluation.patient import operating_point_bootstrap
from blastscan.evaluation.tuning import Tuned
from blastscan.features.featureset import FeatureMatrix, FeatureSet, FeatureSetSpec
from blastscan.options import DeepOptions, params_for

__all__ = ["TRAIN_SETTINGS", "train", "train_bundle", "TrainingData", "outer_estimate"]

#: Train's defaults: compare's (5 outer folds for the estimate; the threshold CV as compare's inner CVs).
TRAIN_SETTINGS = EvalSettings()


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
        return cls(fm=fm, X=fm.X.astype(np.float64),  # fitted as scored (see classifiers.predict_p_all)
                   y=(rows["label"] == "all").to_numpy().astype(int),
                   groups=rows["group"].to_numpy().astype(str), subjects=rows["subject"].to_numpy().astype(str))

    def record(self, dataset: str | None) -> dict[str, Any]:
        """The ``training_data`` entry of a bundle."""
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
    decision: Any
    estimate: dict | None
    inner_splits: int
    plan: FoldPlan | None
    notes: list[str] = field(default_factory=list)
    operating_point_bootstrap: dict | None = None  # what blast-fraction intervals need


def outer_estimate(spec, params, data: TrainingData, settings: EvalSettings) -> dict | None:
    """The shipped operating point measured as compare measures it: an outer subject-disjoint CV
    (``settings.folds``), each fold's calibration and threshold chosen by the shared procedure on its training
    part, pooled over the held-out folds, with subject-bootstrap intervals. None when no split exists."""
    try:
        plan = plan_subject_folds(data.groups, data.y, settings.folds, settings.seed)
    except BlastscanError:
        return None
    targets = operating_targets(settings.target_recall)
    cv = subject_cv(spec, params, data.X, data.y, data.groups, plan=plan, inner_splits=settings.inner_folds,
                    seed=settings.seed, target_recall=settings.target_recall, targets=targets)
    rule = settings.threshold_rule
    per_fold = cv.target_thresholds[round(settings.target_recall, 4)] if rule == "recall" else cv.fold_thresholds[rule]
    thr = np.array(per_fold)[cv.fold]
    met = compute_metrics(data.y, cv.p_all, thr, subjects=data.subjects, groups=data.groups)
    ci = bootstrap_ci(data.y, cv.p_all, thr, data.groups, n_boot=settings.n_boot, seed=settings.seed,
                      metrics=("recall_all", "specificity", "weighted_f1", "roc_auc")) if settings.n_boot else {}
    return {"metrics": met, "ci": {k: list(v) for k, v in ci.items()}, "fold_thresholds": list(per_fold),
            "threshold_spread": threshold_spread(per_fold), "n_splits": plan.n_splits, "inner_mode": cv.inner,
            "n_boot": int(settings.n_boot), "notes": list(cv.notes),
            "split": (f"outer subject-disjoint {plan.n_splits}-fold CV of the training data: each fold's threshold "
                      f"chosen on its training part by the shipped procedure, measured on held-out subjects "
                      f"({met['n_subjects']} subjects, {met['n']} cells)")}


def _fit_with_threshold(data: TrainingData, classifier, params: Mapping[str, Any], settings: EvalSettings,
                        progress: bool, estimate: dict | None = None) -> _Fitted:
    """The outer-fold estimate (unless given), the shipped calibration map and threshold (the procedure
    compare runs per fold, on an inner CV over all subjects), then the final fit on every row."""
    notes: list[str] = []
    if estimate is None:
        estimate = outer_estimate(classifier, params, data, settings)
        if estimate is None:
            notes.append("no operating-point estimate: too few subjects for an outer subject-disjoint split")
    inner_mode = (estimate or {}).get("inner_mode", "nested")
    n_outer = (estimate or {}).get("n_splits", settings.folds)
    k = shipped_inner_splits(n_outer, inner_mode, settings.inner_folds)
    bar = tqdm(total=k + 1, desc="train", unit="fit", disable=not progress, dynamic_ncols=True)
    try:
        if k >= 2:
            decision, plan = shipped_decision(classifier, params, data.X, data.y, data.groups, n_splits=k,
                                              seed=settings.seed, target_recall=settings.target_recall,
                                              targets=operating_targets(settings.target_recall),
                                              progress=lambda: bar.update(1))
        else:  # --inner-folds 0: compare's folds had no inner CV either
            decision, plan = decide(data.y, None, targets=operating_targets(settings.target_recall)), None
            decision.note = "threshold left at 0.5, no calibration (--inner-folds 0, as in compare)"
        if plan is None:
            notes.append(decision.note)
        else:
            notes += plan.notes
        est = make_classifier(classifier, params, settings.seed)
        est = fit_model(est, data.X, data.y, data.groups) or est
        bar.update(1)
    finally:
        bar.close()
    threshold = decision.threshold(settings.threshold_rule, settings.target_recall)
    per_fold = (estimate or {}).get("fold_thresholds") or []
    if per_fold:
        unstable = spread_note(per_fold)
        if unstable:
            notes.append(unstable)
        lo, hi = min(per_fold), max(per_fold)
        if plan is not None and not lo - 0.05 <= threshold <= hi + 0.05:
            notes.append(f"the shipped threshold {threshold:.3f} lies outside the range of the outer folds' "
                         f"thresholds ({lo:.3f}-{hi:.3f}) whose recall and specificity are reported: on all "
                         "subjects the procedure chose differently, so the reported operating point may not hold")
    boot = None
    if decision.p_oof is not None:  # what blast-fraction intervals need: the calls at the shipped threshold
        boot = operating_point_bootstrap(data.y, decision.p_oof, data.subjects, threshold, seed=settings.seed)
    return _Fitted(est, threshold, decision, estimate, k, plan, notes, boot)


#: Feature tables wider than this (block activations) keep no reference cells for ``view`` in the bundle.
WIDE_FEATURES = 20_000


def _inputs(classifier, feature_set: str) -> str:
    """The feature set the model reads (``finetune`` on ``inception_v3``: the cached mixed8 activations)."""
    found = classifier_inputs(classifier, feature_set)
    if found is None:
        raise BlastscanError(f"classifier '{classifier}'", f"does not run on the '{feature_set}' features")
    return found


def _feature_set(classifier, feature_set: FeatureSetSpec | str, options) -> FeatureSet:
    """What the model reads: ``feature_set`` itself (a set the command line parsed is not parsed again), or
    the classifier's own input (``finetune`` on ``inception_v3``: the cached mixed8 activations)."""
    spec = FeatureSetSpec.parse(feature_set)
    inputs = _inputs(classifier, spec.text)
    return FeatureSet(spec if inputs == spec.text else inputs, DeepOptions.from_mapping(options))


def train_bundle(
    manifest_df: pd.DataFrame,
    feature_set: FeatureSetSpec | str,
    classifier,
    store: str | os.PathLike,
    *,
    params: Mapping[str, Any] | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    settings: EvalSettings = TRAIN_SETTINGS,
    dataset: str | None = None,
    progress: bool = True,
    tune: bool = False,
    estimate: dict | None = None,
) -> Bundle:
    """Fit ``classifier`` on every labelled row of ``manifest_df`` and wrap it as a :class:`Bundle`.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest; unlabelled rows are ignored.
    feature_set : FeatureSetSpec or str
        E.g. ``"handcrafted"`` or ``"handcrafted+inception_v3"``; features must be in ``store``.
    classifier : str, callable or estimator
        A name from :func:`blastscan.classifiers.available_classifiers` (or see
        :func:`blastscan.evaluation.make_classifier`).
    store : path
        Feature store holding the features.
    params : dict, optional
        Classifier parameters.
    extractor_options : DeepOptions or dict, optional
        The deep backbones' options, as given to ``extract``.
    settings : EvalSettings
        Seed, threshold rule, target recall, ``folds`` (the outer CV of the operating-point estimate) and
        ``inner_folds`` (as compare's), ``n_boot``.
    dataset : str, optional
        Recorded, and used in the hint of a missing-features error.
    progress : bool
        Progress bar over the fits on stderr.
    tune : bool
        Search the classifier's small grid on subject-grouped inner folds of the training data (inside
        every threshold fold too); the values chosen for the final model are recorded in the bundle.
    estimate : dict, optional
        The operating point measured by a compare run (``export``); without it the outer CV is run here.
    """
    params = dict(params or {})
    leaky = require_subjects(manifest_df, settings.per_image_split, "train")
    rows, _ = labelled_rows(manifest_df)
    if len(rows) == 0:
        raise BlastscanError(dataset or "manifest", "no labelled images (labels all/hem) to train on")
    fs = _feature_set(classifier, feature_set, extractor_options)
    share_weights_dir(classifier if isinstance(classifier, str) else [], extractor_options)
    fm = fs.read(rows, store, dataset_hint=dataset or "DATASET")
    if len(fm.rows) == 0:
        raise BlastscanError("--features", f"no labelled image has '{feature_set}' features")
    data = TrainingData.from_features(fm)
    if len(np.unique(data.y)) < 2:
        raise BlastscanError(dataset or "manifest", "the training data holds one class only (need ALL and HEM)")
    spec, fit_params = classifier, params
    if tune:
        spec, fit_params = Tuned(classifier=classifier, params=params), {}
    fitted = _fit_with_threshold(data, spec, fit_params, settings, progress, estimate)
    if leaky and fitted.estimate is not None:  # every record of these numbers says so
        fitted.estimate["split"] = f"{leaky}; {fitted.estimate['split']}"
    metadata = _metadata(fs, fm, data, fitted, classifier, params, settings, extractor_options, dataset)
    if tune:
        metadata["tuned"] = {"grid": "blastscan.evaluation.tuning.GRIDS", "chosen": fitted.model.best_params_,
                             "scores": [[c, s] for c, s in fitted.model.scores_]}
    metadata["leaky_split"] = leaky
    bundle = Bundle(model=fitted.model, metadata=metadata)
    # what `blastscan view` shows beside a cell: training distributions, importances, reference cells
    # block activations (finetune: 81,920 columns) keep no reference cells: 240 of them would weigh 78 MB
    wide = data.X.shape[1] > WIDE_FEATURES
    bundle.extras["view"] = training_reference(fitted.model, data.X, fm.rows, list(fm.feature_names),
                                               seed=settings.seed, **({"max_cells": 0} if wide else {}))
    return bundle


def _metadata(fs: FeatureSet, fm: FeatureMatrix, data: TrainingData, fitted: _Fitted, classifier, params,
              settings: EvalSettings, extractor_options, dataset) -> dict:
    versions = prov.library_versions()
    est = fitted.estimate
    name = classifier if isinstance(classifier, str) else getattr(classifier, "__name__", type(classifier).__name__)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "blastscan_version": versions.get("blastscan"),
        "created": prov.timestamp(),
        "git_revision": prov.git_revision(),
        "feature_set": fs.text,
        "feature_names": list(fm.feature_names),
        "n_features": int(data.X.shape[1]),
        "extractors": fs.specs(),
        "extractor_options": DeepOptions.from_mapping(extractor_options).record(),
        "classifier": name,
        "params": params,
        "seed": int(settings.seed),
        "threshold": {"value": fitted.threshold, **settings.threshold_record(),
                      "rule_text": settings.rule_text(on="calibrated out-of-fold P(ALL)"),
                      "chosen_on": (f"calibrated out-of-fold P(ALL) of a {fitted.inner_splits}-fold subject-disjoint CV "
                                    f"over all {data.record(None)['n_subjects']} training subjects (the procedure "
                                    "compare measures per outer fold)") if fitted.plan is not None else "none",
                      "calibrated": fitted.decision.calibration is not None,
                      "targets": {f"{t:.2f}": v for t, v in fitted.decision.targets.items()}},
        "calibration": fitted.decision.calibration,
        "operating_point": _operating_point(fitted, settings),
        "training_metrics": {"split": (est or {}).get("split", "none (too few subjects for a subject-disjoint split)"),
                             "n_splits": (est or {}).get("n_splits", 0),
                             "metrics": (est or {}).get("metrics"), "notes": fitted.notes,
                             "operating_point_bootstrap": fitted.operating_point_bootstrap},
        "training_data": data.record(dataset),
        "versions": versions,
    }
    return prov.to_jsonable(metadata)


def _operating_point(fitted: _Fitted, settings: EvalSettings) -> dict | None:
    """What the bundle says about its threshold on new patients: the outer-fold estimate with intervals."""
    est = fitted.estimate
    if est is None:
        return None
    met, ci = est.get("metrics") or {}, est.get("ci") or {}
    out = {"split": est["split"], "target_recall": settings.target_recall if settings.threshold_rule == "recall" else None,
           "rule": settings.threshold_rule, "n_subjects": met.get("n_subjects"), "n_cells": met.get("n"),
           "n_boot": est.get("n_boot"), "fold_thresholds": est.get("fold_thresholds"),
           "threshold_spread": est.get("threshold_spread"), "source": est.get("source", "train: outer CV")}
    for k in ("recall_all", "specificity", "weighted_f1", "roc_auc"):
        out[k] = met.get(k)
        out[f"{k}_ci"] = ci.get(k)
    return out


def train(
    manifest_df: pd.DataFrame,
    feature_set: FeatureSetSpec | str,
    classifier: str,
    store: str | os.PathLike,
    *,
    params: Sequence[str] | Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    settings: EvalSettings = TRAIN_SETTINGS,
    jobs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    tune: bool = False,
    embed: bool = True,
    dataset: str | None = None,
) -> Bundle:
    """Fit ``classifier`` on ``feature_set`` features of every labelled image of ``manifest_df``.

    Computes the features the store lacks, fits (:func:`train_bundle`) and, with ``out``, saves the bundle
    and its ``.json`` sidecar.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (``blastscan.dataset.build_manifest(...).df``); unlabelled rows are ignored.
    feature_set, classifier : FeatureSetSpec or str, str
        E.g. ``"handcrafted"`` and ``"svm"``.
    store : path
        Feature store (missing features are computed into it).
    params : list of "clf.name=value" or dict
        Parameters of ``classifier`` (``["svm.C=10"]``, ``{"svm": {"C": 10}}`` or ``{"C": 10}``).
    params_file : path, optional
        JSON file of parameters per classifier (only ``classifier``'s entry is used; ``params`` win).
    out : path, optional
        Write the bundle (and its ``.json`` sidecar) here; a ``.bsb`` path writes the data-only bundle
        (JSON + ONNX, no sidecar, see :mod:`blastscan.bundle.data_only`).
    embed : bool
        Data-only bundles only: carry the backbones' ONNX graphs (scoring then needs no weight files).
    extractor_options, settings
        See :func:`train_bundle`.
    jobs : int, optional
        Processes for per-image features.
    echo : callable
        Where progress lines go.
    dataset : str, optional
        How the data was named (recorded in the bundle; used in messages).
    """
    feature_set = FeatureSetSpec.parse(feature_set)  # a FeatureSetSpec from the CLI is kept, a str parsed here
    clf_params = params_for(classifier, params, params_file)
    if out is not None:
        check_writable_file(out, "--out")
    require_subjects(manifest_df, settings.per_image_split, "train")  # before any feature is computed
    data = labelled(manifest_df)
    if len(data) == 0:
        raise BlastscanError(str(dataset or "manifest"), "no labelled images (labels all/hem) to train on")
    options = DeepOptions.from_mapping(extractor_options)
    summary = _feature_set(classifier, feature_set, options).ensure(data, store, jobs=jobs, progress=progress)
    echo(summary.format(max_failures=5))
    bundle = train_bundle(data, feature_set, classifier, store, params=clf_params,
                          extractor_options=options, settings=settings,
                          dataset=str(dataset) if dataset is not None else None,
                          progress=progress, tune=tune)
    echo(bundle.summary())
    if out is not None:
        save_bundle(bundle, out, embed=embed, extractor_options=options)
        echo(f"bundle: {out} ({_format_note(Path(out), embed)})")
    return bundle


def _format_note(out: Path, embed: bool) -> str:
    """What was written, in words, for the line after ``bundle:``."""
    if out.suffix.lower() != SUFFIX:
        return f"joblib, + {out.with_suffix('.json').name}; for sharing write a data-only .bsb instead"
    return "data-only: JSON + ONNX" + ("" if embed else ", backbones not embedded (scoring needs the weight files)")
