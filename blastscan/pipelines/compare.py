"""The comparison grid: feature sets x classifiers, evaluated subject-disjoint, written as a run folder.

For every configuration: a subject-disjoint CV (thresholds chosen inside each training part), the
dataset's official phase (train folds -> preliminary test) when present, and a per-image split that is
kept only to show how much it inflates results (labelled leaky everywhere). All configurations share the
same folds, so they are compared on the same cells and subjects.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError
from blastscan.features.store import atomic_path, atomic_write_bytes
from blastscan.pipelines.evaluate import (
    CI_METRICS,
    LEAKY_NOTE,
    METRIC_NAMES,
    FitTask,
    assemble_holdout,
    assemble_subject_cv,
    bootstrap_ci,
    compute_metrics,
    holdout_tasks,
    leaky_folds,
    per_subject_accuracy,
    plan_subject_folds,
    run_fit,
    subject_cv_tasks,
)

__all__ = ["DEFAULT_FEATURE_SETS", "DEFAULT_CLASSIFIERS", "CompareResult", "compare", "parse_params",
           "split_list", "default_run_dir", "rank_configs"]

DEFAULT_FEATURE_SETS = ("handcrafted", "inception_v3", "vgg16", "handcrafted+inception_v3")
DEFAULT_CLASSIFIERS = ("logreg", "svm", "xgboost", "fcn", "fcn_svm")
RULE_TEXT = {"recall": "highest threshold reaching ALL recall >= {target:.2f}", "f1": "best weighted F1"}

# split kinds, as written in metrics.csv
SUBJECT_POOLED = "subject_cv_pooled"
SUBJECT_FOLD = "subject_cv_fold"
LEAKY = "leaky_image_cv_pooled"
OFFICIAL = "official_prelim"


# ------------------------------------------------------------------------------------------------
# small parsers shared with the CLI
def split_list(value: str | Sequence[str]) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (lists pass through), without empties or repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return json.loads(text)  # lists such as [64,32]
    except ValueError:
        return text


def parse_params(items: Sequence[str] | Mapping | None) -> dict[str, dict[str, Any]]:
    """``["svm.C=10", "xgboost.max_depth=3"]`` -> ``{"svm": {"C": 10}, "xgboost": {"max_depth": 3}}``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): dict(v) for k, v in items.items()}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        clf, dot, name = key.strip().partition(".")
        if not sep or not dot or not clf or not name:
            raise BlastscanError(f"--param {item}", "expected CLASSIFIER.NAME=VALUE, e.g. svm.C=10")
        out.setdefault(clf, {})[name] = _parse_value(value.strip())
    return out


def load_params(items: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Classifier parameters from a JSON file (``{"svm": {"C": 10}}``) overridden by ``--param`` items."""
    out: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise BlastscanError(str(path), f"cannot read ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise BlastscanError(str(path), f"not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BlastscanError(str(path), 'expected {"classifier": {"parameter": value, ...}, ...}')
        out = parse_params(data)
    for clf, values in parse_params(items).items():
        out.setdefault(clf, {}).update(values)
    return out


def default_run_dir(base: str | os.PathLike = "blastscan-runs") -> Path:
    """``blastscan-runs/<local time stamp>`` (a suffix is added if that folder exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    i = 1
    while path.exists():
        path = Path(base) / f"{stamp}-{i}"
        i += 1
    return path


# ------------------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    """Everything a comparison produced (also written under ``run_dir``).

    Attributes
    ----------
    run_dir : Path
    best : str or None
        Name (``feature_set/classifier``) of the configuration with the best pooled subject-disjoint
        weighted F1 (ties: ROC-AUC); None when every configuration was skipped.
    metrics : DataFrame
        One row per configuration x split kind (``subject_cv_pooled``, ``subject_cv_fold``,
        ``leaky_image_cv_pooled``, ``official_prelim``), with 95% CI columns for pooled rows.
    predictions : DataFrame
        Out-of-fold P(ALL) per image and configuration (subject CV and official phase).
    per_subject : DataFrame
        Per-subject accuracy per configuration (subject CV).
    run : dict
        The content of ``run.json``.
    skipped : list of dict
        ``{name, feature_set, classifier, reason}`` for what could not be evaluated.
    notes : list of str
        Adaptations to the data (fewer folds, one-class folds, dropped images, ...).
    """

    run_dir: Path
    best: str | None
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    per_subject: pd.DataFrame
    run: dict
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def best_row(self) -> pd.Series | None:
        """The pooled subject-disjoint metrics row of the best configuration."""
        if self.best is None:
            return None
        m = self.metrics
        sel = m[(m["config"] == self.best) & (m["split"] == SUBJECT_POOLED) & (m["headline"])]
        return sel.iloc[0]

    def summary(self) -> str:
        """A few lines for the terminal: the best configuration, what its numbers rest on, where the report is."""
        from blastscan.pipelines.report import best_sentence, fmt

        lines = []
        row = self.best_row()
        if row is None:
            lines.append("no configuration could be evaluated")
        else:
            lines.append(best_sentence(self))
            ranked = rank_configs(self.metrics)
            if len(ranked) > 1:
                lines.append("ranking (pooled subject-disjoint weighted F1 [95% CI], ROC-AUC):")
                for _, r in ranked.iterrows():
                    lines.append(f"  {r['config']:<34} {fmt(r['weighted_f1'])} "
                                 f"[{fmt(r['weighted_f1_ci_low'])}, {fmt(r['weighted_f1_ci_high'])}]  "
                                 f"ROC-AUC {fmt(r['roc_auc'])}")
        for s in self.skipped:
            lines.append(f"skipped {s['name']}: {s['reason']}")
        lines.append(f"report: {self.run_dir / 'report.html'} (and report.md, metrics.csv)")
        return "\n".join(lines)


def rank_configs(metrics: pd.DataFrame) -> pd.DataFrame:
    """Pooled subject-disjoint headline rows, best first: weighted F1, then ROC-AUC, then name."""
    rows = metrics[(metrics["split"] == SUBJECT_POOLED) & (metrics["headline"])].copy()
    rows["_f1"] = rows["weighted_f1"].fillna(-np.inf)
    rows["_auc"] = rows["roc_auc"].fillna(-np.inf)
    rows = rows.sort_values(["_f1", "_auc", "config"], ascending=[False, False, True], kind="stable")
    return rows.drop(columns=["_f1", "_auc"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
def _labelled_rows(manifest_df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    df = manifest_df.copy()
    label = df["label"].astype("string").str.lower()
    keep = label.isin(["all", "hem"]).fillna(False).to_numpy(dtype=bool)
    df = df[keep].copy()
    df["label"] = label[keep].astype(str).to_numpy()
    n_unlabelled = int((~keep).sum())
    # group is the split unit; fall back to subject, then to the image itself, so nothing is ungrouped
    subject = df["subject"].astype("string") if "subject" in df else pd.Series(pd.NA, index=df.index, dtype="string")
    group = df["group"].astype("string") if "group" in df else pd.Series(pd.NA, index=df.index, dtype="string")
    group = group.fillna(subject).fillna("img:" + df["sha256"].astype("string").str[:12])
    df["group"] = group.astype(str).to_numpy()
    df["subject"] = subject.fillna(df["group"]).astype(str).to_numpy()
    if "source_split" not in df:
        df["source_split"] = ""
    df["source_split"] = df["source_split"].astype("string").fillna("").astype(str).to_numpy()
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df))
    return df, n_unlabelled


def _check_classifiers(classifiers: Sequence[str]) -> None:
    try:
        from blastscan.classifiers import available_classifiers
    except ImportError:
        return
    known = list(available_classifiers())
    for c in classifiers:
        if c not in known:
            raise BlastscanError(f"classifier '{c}'", f"unknown; choose from: {', '.join(known)}")


def _task(name: str, spec, params, X, y, groups, task: FitTask, seed: int, one_thread: bool = False):
    """One unit of work for the pool: one model fit and its predictions."""
    t0 = time.perf_counter()
    if one_thread:
        # In a worker of a parallel grid: TensorFlow (FCN) reads these when it starts; joblib already limits
        # OpenMP/BLAS (XGBoost, numpy) to one thread per worker.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    try:
        p = run_fit(spec, params, X, y, groups, task, seed)
    except BlastscanError as exc:
        return name, task.key, None, time.perf_counter() - t0, exc.why or str(exc)
    return name, task.key, p, time.perf_counter() - t0, None


def _official_split(data: pd.DataFrame, y: np.ndarray, notes: list[str]):
    split = data["source_split"].astype(str)
    train = np.flatnonzero(split.str.startswith("fold_").to_numpy())
    test = np.flatnonzero((split == "prelim").to_numpy())
    if len(train) == 0 or len(test) == 0:
        return None
    test_groups = set(data["group"].iloc[test])
    overlap = data["group"].iloc[train].isin(test_groups).to_numpy()
    if overlap.any():
        notes.append(f"official phase: {int(overlap.sum())} training-fold cells of subjects also in the "
                     "preliminary test were left out of its training set (subject-disjoint)")
        train = train[~overlap]
    if len(np.unique(y[train])) < 2:
        notes.append("official phase skipped: its training folds hold one class only")
        return None
    return train, test


def compare(
    manifest_df: pd.DataFrame,
    feature_sets: Sequence[str] | str,
    classifiers: Sequence[str] | str,
    store: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    extractor_options: Mapping[str, Any] | None = None,
    n_splits: int = 5,
    seed: int = 0,
    threshold_rule: str = "recall",
    target_recall: float = 0.90,
    params: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    progress: bool = True,
    dataset: str | None = None,
    jobs: int | None = None,
    inner_splits: int = 3,
    leaky_splits: int = 3,
    n_boot: int = 1000,
) -> CompareResult:
    """Evaluate every feature set x classifier subject-disjoint and write the run folder.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (``blastscan.dataset.build_manifest(...).df``); unlabelled rows are ignored.
    feature_sets, classifiers : list of str (or comma-separated str)
        E.g. ``["handcrafted", "handcrafted+inception_v3"]`` and ``["svm", "xgboost"]``.
    store : path
        Feature store holding the features (``blastscan extract`` computes them; a missing feature set
        raises an error naming that command).
    out_dir : path, optional
        Run folder (default ``blastscan-runs/<timestamp>``).
    extractor_options : dict, optional
        ``weights_dir``, ``input_size``, ... (must match those used by ``extract``).
    n_splits : int
        Outer subject-disjoint folds (reduced when the data has fewer subject groups of a class).
    seed : int
        Seeds folds, models and the bootstrap.
    threshold_rule : {"recall", "f1"}
        How each training part chooses the decision threshold.
    target_recall : float
        ALL recall targeted by ``threshold_rule="recall"``.
    params : dict or list of "clf.name=value"
        Classifier parameters, e.g. ``{"svm": {"C": 10}}``.
    progress : bool
        Progress bar on stderr.
    dataset : str, optional
        How the data was named (recorded; used in the hint of a missing-features error).
    jobs : int, optional
        Parallel fits (joblib processes; default all cores). Each fit is limited to one thread when
        ``jobs > 1``.
    inner_splits : int
        Each outer fold's threshold comes from out-of-fold predictions on its training part. By default the
        inner CV reuses the other K-1 outer folds (K(K-1)/2 extra fits for the whole CV); ``inner_splits``
        is the number of inner folds when that is not possible, and of the official phase's inner CV.
    leaky_splits : int
        Folds of the per-image (leaky) comparison, one fit each; 0 skips it.
    n_boot : int
        Bootstrap resamples of subjects for the 95% intervals.

    Returns
    -------
    CompareResult
    """
    from blastscan import provenance as prov
    from blastscan.pipelines.extract import load_features

    t_start = time.time()
    started = prov.timestamp()
    feature_sets = split_list(feature_sets)
    classifiers = split_list(classifiers)
    if not feature_sets:
        raise BlastscanError("--features", "no feature set given")
    if not classifiers:
        raise BlastscanError("--classifiers", "no classifier given")
    if threshold_rule not in ("recall", "f1"):
        raise BlastscanError("--threshold", f"unknown rule '{threshold_rule}'; choose recall or f1")
    if not 0 < float(target_recall) <= 1:
        raise BlastscanError("--target-recall", f"must be in (0, 1] (got {target_recall})")
    for opt, value in (("--inner-folds", inner_splits), ("--leaky-folds", leaky_splits)):
        if value != 0 and value < 2:
            raise BlastscanError(opt, f"must be 0 (off) or at least 2 (got {value})")
    if n_boot < 0:
        raise BlastscanError("--bootstrap", f"must be >= 0 (got {n_boot})")
    params = parse_params(params)
    _check_classifiers(classifiers)
    unused = sorted(set(params) - set(classifiers))
    if unused:
        raise BlastscanError(f"--param {unused[0]}.*", f"'{unused[0]}' is not among the compared classifiers")
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    jobs = max(1, os.cpu_count() or 1) if jobs is None or jobs <= 0 else int(jobs)
    alt_rule = "f1" if threshold_rule == "recall" else "recall"

    data, n_unlabelled = _labelled_rows(manifest_df)
    notes: list[str] = []
    if n_unlabelled:
        notes.append(f"{n_unlabelled} unlabelled image{'s' if n_unlabelled != 1 else ''} ignored")
    if len(data) == 0:
        raise BlastscanError(dataset or "manifest", "no labelled images (labels all/hem) to evaluate")
    skipped: list[dict] = []

    # -- features: one matrix per feature set, restricted to the cells every set has -------------------
    matrices = {}
    hint = dataset or "DATASET"
    for fs in feature_sets:
        fm = load_features(data, fs, store, extractor_options=extractor_options, dataset_hint=hint)
        if len(fm.dropped):
            reasons = fm.dropped["reason"].astype(str).value_counts().head(3)
            notes.append(f"{fs}: {len(fm.dropped)} images have no features and were left out "
                         f"({'; '.join(f'{n}x {r}' for r, n in reasons.items())})")
        if len(fm.rows) == 0:
            for c in classifiers:
                skipped.append({"name": f"{fs}/{c}", "feature_set": fs, "classifier": c,
                                "reason": f"no image has '{fs}' features"})
            continue
        matrices[fs] = fm
    if not matrices:
        raise BlastscanError("--features", "no feature set has features for any image")
    common = None
    for fm in matrices.values():
        rows = set(fm.rows["_row"].tolist())
        common = rows if common is None else common & rows
    common_idx = np.array(sorted(common), dtype=int)
    if len(common_idx) < len(data):
        notes.append(f"{len(data) - len(common_idx)} labelled images lack features of at least one feature set; "
                     f"every configuration is evaluated on the same {len(common_idx)} images")
    data = data.iloc[common_idx].reset_index(drop=True)
    Xs = {}
    for fs, fm in matrices.items():
        pos = pd.Series(np.arange(len(fm.rows)), index=fm.rows["_row"].to_numpy())
        Xs[fs] = np.ascontiguousarray(fm.X[pos.loc[common_idx].to_numpy()])
    y = (data["label"] == "all").to_numpy().astype(int)
    groups = data["group"].to_numpy().astype(str)
    subjects = data["subject"].to_numpy().astype(str)

    # -- splits shared by every configuration ------------------------------------------------------
    plan = plan_subject_folds(groups, y, n_splits, seed)
    notes += plan.notes
    leaky = leaky_folds(y, leaky_splits, seed) if leaky_splits else []
    official = _official_split(data, y, notes)

    # -- tasks: every model fit of the grid, run by one pool ------------------------------------------
    cv_tasks, inner = subject_cv_tasks(plan, y, groups, inner_splits=inner_splits, seed=seed)
    fixed_tasks = list(cv_tasks)
    holdout_info = None
    if official is not None:
        h_tasks, holdout_info = holdout_tasks(official[0], official[1], y, groups, inner_splits=inner_splits,
                                              seed=seed)
        fixed_tasks += h_tasks
    fixed_tasks += [FitTask(("leaky", i), tr, te) for i, (tr, te) in enumerate(leaky)]
    # what the inner (threshold) CVs had to adapt, once per run: it depends on the data, not the model
    if inner["mode"] == "nested":
        for k, ip in inner["plans"].items():
            notes += [f"outer fold {k}: {n}" for n in (ip.notes if ip is not None else [])]
        notes += [f"outer fold {k}: {n}" for k, n in inner["notes"].items()]
    if holdout_info is not None:
        notes += [f"official phase: {n}" for n in (holdout_info["plan"].notes if holdout_info["plan"] else [])]
        if holdout_info["note"]:
            notes.append(f"official phase: {holdout_info['note']}")
    configs = [(fs, c) for fs in Xs for c in classifiers]
    tasks = [(f"{fs}/{c}", c, params.get(c, {}), Xs[fs], y, groups, t) for fs, c in configs for t in fixed_tasks]
    preds: dict[str, dict[tuple, np.ndarray]] = {f"{fs}/{c}": {} for fs, c in configs}
    seconds: dict[str, float] = {name: 0.0 for name in preds}
    errors: dict[str, str] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="compare", unit="fit", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t_grid = time.perf_counter()
    try:
        for name, key, p, secs, err in _run_tasks(tasks, jobs, seed):
            bar.update(1)
            bar.set_postfix_str(name, refresh=False)
            seconds[name] += secs
            if err is not None:
                errors.setdefault(name, err)
            else:
                preds[name][key] = p
    finally:
        bar.close()
    grid_seconds = time.perf_counter() - t_grid

    # -- assemble ---------------------------------------------------------------------------------
    metric_rows, pred_frames, subj_frames, config_records = [], [], [], []
    base_cols = data[["path", "sha256", "subject", "group", "label"]].reset_index(drop=True)
    for fs, c in configs:
        name = f"{fs}/{c}"
        if name in errors:
            skipped.append({"name": name, "feature_set": fs, "classifier": c, "reason": errors[name]})
            continue
        got = preds[name]
        cv = assemble_subject_cv(plan, inner, got, y, target_recall=target_recall)
        fit_seconds = seconds[name]
        common_info = {"config": name, "feature_set": fs, "classifier": c}
        for rule in (threshold_rule, alt_rule):
            thr = cv.thresholds[rule]
            row = _metrics_row(common_info, SUBJECT_POOLED, "all", rule, y, cv.p_all, thr, subjects, groups,
                               headline=rule == threshold_rule)
            row["threshold"] = float(np.median(cv.fold_thresholds[rule]))
            row["note"] = f"pooled out-of-fold over {plan.n_splits} subject-disjoint folds; per-fold thresholds " \
                          f"{', '.join(f'{t:.3f}' for t in cv.fold_thresholds[rule])}"
            if rule == threshold_rule:
                _add_ci(row, y, cv.p_all, thr, groups, n_boot, seed)
            metric_rows.append(row)
        for i, (tr, te) in enumerate(plan.folds):
            thr_i = cv.fold_thresholds[threshold_rule][i]
            row = _metrics_row(common_info, SUBJECT_FOLD, str(i), threshold_rule, y[te], cv.p_all[te], thr_i,
                               subjects[te], groups[te], headline=True)
            row["threshold"] = thr_i
            row["note"] = ("one class in this test fold: ROC-AUC/PR-AUC undefined"
                           if i in plan.one_class_folds else "")
            metric_rows.append(row)
        oof = base_cols.copy()
        oof["split"] = "subject_cv"
        oof["fold"] = cv.fold.astype(str)
        oof["p_all"] = cv.p_all
        oof["threshold"] = cv.thresholds[threshold_rule]
        oof["pred"] = np.where(cv.p_all >= cv.thresholds[threshold_rule], "all", "hem")
        oof["config"] = name
        pred_frames.append(oof)
        subj = per_subject_accuracy(subjects, groups, y, cv.p_all, cv.thresholds[threshold_rule])
        subj.insert(0, "config", name)
        subj_frames.append(subj)

        official_info = None
        if official is not None:
            te = official[1]
            p_off, thr_off = assemble_holdout(official[0], holdout_info, got, y, target_recall=target_recall)
            thr_o = thr_off[threshold_rule]
            row = _metrics_row(common_info, OFFICIAL, "prelim", threshold_rule, y[te], p_off, thr_o,
                               subjects[te], groups[te], headline=True)
            row["threshold"] = thr_o
            row["note"] = ("official phase: trained on the training folds, tested on the preliminary-test cells"
                           + (f"; {holdout_info['note']}" if holdout_info["note"] else ""))
            _add_ci(row, y[te], p_off, thr_o, groups[te], n_boot, seed)
            metric_rows.append(row)
            op = base_cols.iloc[te].copy()
            op["split"] = "official"
            op["fold"] = "prelim"
            op["p_all"] = p_off
            op["threshold"] = thr_o
            op["pred"] = np.where(p_off >= thr_o, "all", "hem")
            op["config"] = name
            pred_frames.append(op)
            official_info = {"thresholds": thr_off, "n_train": int(len(official[0])), "n_test": int(len(te))}
        if leaky:
            p_leaky = np.full(len(y), np.nan)
            for i, (_, te) in enumerate(leaky):
                p_leaky[te] = got[("leaky", i)]
            thr_l = float(np.median(cv.fold_thresholds[threshold_rule]))
            row = _metrics_row(common_info, LEAKY, "all", threshold_rule, y, p_leaky, thr_l, subjects, groups,
                               headline=True)
            row["threshold"] = thr_l
            row["note"] = (f"{LEAKY_NOTE} ({len(leaky)}-fold per-image StratifiedKFold; threshold = median "
                           "of the subject-disjoint folds' thresholds, so only the split differs)")
            metric_rows.append(row)
        config_records.append({
            "name": name, "feature_set": fs, "classifier": c, "params": params.get(c, {}),
            "fold_thresholds": cv.fold_thresholds, "official": official_info,
            "fit_seconds": round(fit_seconds, 2),
        })

    metrics = pd.DataFrame(metric_rows)
    if len(metrics):
        metrics = metrics[_metric_columns(metrics)]
    predictions = pd.concat(pred_frames, ignore_index=True) if pred_frames else pd.DataFrame(
        columns=["path", "sha256", "subject", "group", "label", "split", "fold", "p_all", "threshold", "pred", "config"])
    per_subject = pd.concat(subj_frames, ignore_index=True) if subj_frames else pd.DataFrame()
    best = None
    if len(metrics):
        ranked = rank_configs(metrics)
        best = str(ranked.iloc[0]["config"]) if len(ranked) else None

    # -- run record -------------------------------------------------------------------------------
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_name = "manifest.parquet"
    used_manifest = manifest_df.copy()
    used_manifest["used"] = used_manifest["sha256"].isin(set(data["sha256"])) & \
        used_manifest["label"].astype("string").str.lower().isin(["all", "hem"]).fillna(False)
    _write_parquet(used_manifest, run_dir / manifest_name)
    n_all = int(y.sum())
    fold_records = []
    for i, (tr, te) in enumerate(plan.folds):
        fold_records.append({
            "fold": i, "n_test": int(len(te)), "n_test_all": int(y[te].sum()), "n_test_hem": int(len(te) - y[te].sum()),
            "test_groups": sorted(set(groups[te])), "test_subjects": sorted(set(subjects[te])),
            "one_class": i in plan.one_class_folds,
        })
    versions = prov.library_versions()
    run = {
        "dataset": str(dataset) if dataset is not None else None,
        "manifest": manifest_name,
        "store": str(store),
        "extractor_options": prov.to_jsonable({k: v for k, v in (extractor_options or {}).items() if v is not None}),
        "seed": int(seed),
        "n_splits": int(plan.n_splits),
        "n_splits_requested": int(n_splits),
        "inner_splits": int(inner_splits),
        "threshold_inner_cv": (f"{plan.n_splits - 1}-fold, over the other outer folds" if inner["mode"] == "pairs"
                               else f"{inner_splits}-fold, inside each training part"),
        "fits_per_config": len(fixed_tasks),
        "leaky_splits": int(len(leaky)),
        "n_boot": int(n_boot),
        "threshold": {"rule": threshold_rule, "target_recall": float(target_recall)},
        "configs": [{"name": r["name"], "feature_set": r["feature_set"], "classifier": r["classifier"],
                     "params": prov.to_jsonable(r["params"])} for r in config_records],
        "best": best,
        "feature_sets": {fs: {"extractors": prov.to_jsonable(fm.extractors), "n_features": int(fm.X.shape[1]),
                              "n_dropped": int(len(fm.dropped))} for fs, fm in matrices.items()},
        "classifiers": classifiers,
        "data": {
            "n_images": int(len(data)), "n_all": n_all, "n_hem": int(len(y) - n_all),
            "n_subjects": int(len(set(subjects))), "n_groups": int(len(set(groups))),
            "n_subjects_all": int(len(set(subjects[y == 1]))), "n_subjects_hem": int(len(set(subjects[y == 0]))),
            "n_unlabelled_ignored": n_unlabelled,
            "manifest_sha256": prov.manifest_hash(data),
            "input_manifest_sha256": prov.manifest_hash(manifest_df),
        },
        "folds": fold_records,
        "official_phase": None if official is None else {
            "n_train": int(len(official[0])), "n_test": int(len(official[1])),
            "test_subjects": sorted(set(subjects[official[1]]))},
        "results": prov.to_jsonable(config_records),
        "skipped": skipped,
        "notes": notes,
        "versions": versions,
        "blastscan_version": versions.get("blastscan"),
        "git_revision": prov.git_revision(),
        "started": started,
        "finished": prov.timestamp(),
        "seconds": {"grid": round(grid_seconds, 1), "total": round(time.time() - t_start, 1)},
        "jobs": jobs,
    }
    run["config_sha256"] = prov.config_hash({k: run[k] for k in ("extractor_options", "seed", "n_splits_requested",
                                                                  "inner_splits", "leaky_splits", "threshold",
                                                                  "configs")})
    result = CompareResult(run_dir=run_dir, best=best, metrics=metrics, predictions=predictions,
                           per_subject=per_subject, run=run, skipped=skipped, notes=notes)
    _write_outputs(result)
    if best is None:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
        raise BlastscanError("compare", f"no configuration could be evaluated ({reasons}); see {run_dir}")
    return result


def _run_tasks(tasks, jobs: int, seed: int):
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield _task(*t, seed)
        return
    from joblib import Parallel, delayed, parallel_config

    # Models inside the pool use one thread each: jobs processes x many threads would oversubscribe.
    with parallel_config(backend="loky", inner_max_num_threads=1):
        par = Parallel(n_jobs=jobs, return_as="generator_unordered")
        yield from par(delayed(_task)(*t, seed, one_thread=True) for t in tasks)


def _metrics_row(info: dict, split: str, fold: str, rule: str, y, p, thr, subjects, groups, *, headline: bool) -> dict:
    m = compute_metrics(y, p, thr, subjects=subjects, groups=groups)
    return {**info, "split": split, "fold": fold, "threshold_rule": rule, "headline": bool(headline), **m}


def _add_ci(row: dict, y, p, thr, groups, n_boot: int, seed: int) -> None:
    if n_boot <= 0:
        return
    ci = bootstrap_ci(y, p, thr, groups, n_boot=n_boot, seed=seed)
    for name, (lo, hi) in ci.items():
        row[f"{name}_ci_low"] = lo
        row[f"{name}_ci_high"] = hi


def _metric_columns(df: pd.DataFrame) -> list[str]:
    first = ["config", "feature_set", "classifier", "split", "fold", "threshold_rule", "headline", "threshold",
             "n", "n_all", "n_hem", "n_subjects", "n_groups", *METRIC_NAMES, "tn", "fp", "fn", "tp"]
    ci = [f"{m}_ci_{s}" for m in CI_METRICS for s in ("low", "high")]
    cols = [c for c in first + ci if c in df.columns]
    if "note" in df.columns:
        cols.append("note")
    return cols + [c for c in df.columns if c not in cols]


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _write_outputs(result: CompareResult) -> None:
    from blastscan import provenance as prov
    from blastscan.pipelines.report import write_report

    d = result.run_dir
    _write_csv(result.metrics, d / "metrics.csv")
    _write_csv(result.predictions, d / "predictions.csv")
    _write_csv(result.per_subject, d / "per_subject.csv")
    records = prov.to_jsonable(result.metrics.to_dict(orient="records"))
    meta = {"best": result.best, "threshold": result.run["threshold"], "leaky_note": LEAKY_NOTE,
            "split_kinds": {SUBJECT_POOLED: "subject-disjoint CV, pooled out-of-fold (headline)",
                            SUBJECT_FOLD: "subject-disjoint CV, one outer fold",
                            OFFICIAL: "official phase: training folds -> preliminary test",
                            LEAKY: LEAKY_NOTE},
            "metrics": records}
    atomic_write_bytes(d / "metrics.json", json.dumps(meta, indent=1, allow_nan=False).encode())
    write_report(result)
    atomic_write_bytes(d / "run.json", json.dumps(prov.to_jsonable(result.run), indent=2, allow_nan=False).encode())
