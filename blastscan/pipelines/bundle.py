"""Scoring bundles: one joblib file holding a fitted model and everything needed to score new cells with it.

A bundle holds the fitted pipeline, the feature set with each extractor's description (name, version,
identity, config incl. the weights hash), the column order, the decision threshold and how it was chosen,
training metrics with their split, a hash of the training manifest, library versions and the creation
time. A human-readable sidecar ``<name>.json`` repeats the metadata and records the sha256 of the
bundle file.

A joblib file is a pickle: loading one can run arbitrary code. :func:`load_bundle` refuses a file whose
sidecar is missing or whose hash does not match it, unless ``trust=True``. The check catches damaged or
swapped files; it is not a signature (anyone can write a new sidecar), so load only bundles you trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError

__all__ = ["FORMAT", "TRUST_WARNING", "Bundle", "BundleWarning", "train_bundle", "save_bundle", "load_bundle",
           "export_run", "sidecar_path", "file_sha256", "input_manifest"]

FORMAT = "blastscan-bundle"
FORMAT_VERSION = 1
TRUST_WARNING = ("A bundle is a pickle (joblib): loading one can run any code. Load only bundles you made or "
                 "got from someone you trust.")
# Manifest problems that leave an image out (the others, e.g. "no label", keep the row).
_FAILED_KINDS = ("unreadable", "mode", "not_an_image", "missing_image", "csv")
_RULE_TEXT = {"recall": "highest threshold reaching ALL recall >= {target:.2f} on out-of-fold P(ALL)",
              "f1": "best weighted F1 on out-of-fold P(ALL)"}


class BundleWarning(UserWarning):
    """A bundle loaded, but something (e.g. a library version) differs from when it was made."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.joblib`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _p_all(est, X: np.ndarray) -> np.ndarray:
    # float64 in and out: float32 BLAS results can differ in the last bit with batch size and alignment
    col = list(getattr(est, "classes_", [0, 1])).index(1)  # the P(ALL) column, whatever the class order
    return np.asarray(est.predict_proba(np.asarray(X, dtype=np.float64)))[:, col].astype(float)


# ------------------------------------------------------------------------------------------------
def input_manifest(inputs, progress: bool = False, store=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manifest of ``inputs`` (files, folders, CSVs, or a manifest DataFrame) and the rows of files
    that could not be used (``path, sha256, subject, status``); file checks are cached in ``store``."""
    from blastscan.dataset import build_manifest, inspect_cache, parse_cnmc_name

    if isinstance(inputs, pd.DataFrame):
        missing = {"path", "sha256"} - set(inputs.columns)
        if missing:
            raise BlastscanError("manifest", f"lacks column(s) {', '.join(sorted(missing))}")
        return inputs.reset_index(drop=True), _failed_frame([])
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    manifest = build_manifest([str(p) for p in inputs], progress=progress, cache=inspect_cache(store))
    bad = [p for p in manifest.problems if p.kind in _FAILED_KINDS]
    rows = [{"path": p.path, "sha256": "", "subject": parse_cnmc_name(os.path.basename(p.path))[0] or "",
             "status": p.reason.removesuffix(" (left out)")} for p in bad]
    return manifest.df, _failed_frame(rows)


def _failed_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["path", "sha256", "subject", "status"])
    df["p_all"] = np.nan
    df["pred"] = ""
    return df


# ------------------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """A fitted model plus what it needs to score new cells exactly as it was trained.

    Attributes
    ----------
    model : estimator
        The fitted pipeline (``predict_proba(X)[:, 1]`` is P(ALL)).
    metadata : dict
        JSON-able description (also in the sidecar): feature set, extractors, threshold, training
        metrics, data hash, versions.
    path : Path or None
        Where it was loaded from / saved to.
    warnings : list of str
        Version mismatches found when loading.
    extras : dict
        Optional data beside the model, by name; ``"view"`` holds the training reference that
        ``blastscan view`` shows (see :func:`blastscan.pipelines.view.training_reference`).
    """

    model: Any
    metadata: dict
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """A cell is called ALL when ``P(ALL) >= threshold``."""
        return float(self.metadata["threshold"]["value"])

    @property
    def feature_set(self) -> str:
        return self.metadata["feature_set"]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    # -- features -------------------------------------------------------------------------------
    def extractors(self, extractor_options: Mapping[str, Any] | None = None) -> list[tuple[str, dict, Any]]:
        """``(name, options, extractor)`` for each recorded extractor, built now with the recorded config.

        Raises ``BlastscanError`` when an extractor built now has another identity than at training
        (other weights, version or settings): its features would not be those the model learned from.
        """
        from blastscan.pipelines.extract import _clean_options, _extractor

        # the caller's options override those of training (e.g. where the weights are now); the recorded
        # config overrides both: scoring must recompute the same features
        user = {**_clean_options(self.metadata.get("extractor_options")), **_clean_options(extractor_options)}
        out = []
        for rec in self.metadata["extractors"]:
            options = {**user, **_config_options(rec["name"], rec.get("config") or {})}
            ext = _extractor(rec["name"], options)
            if ext.identity != rec["identity"]:
                raise BlastscanError(self._what(), _identity_mismatch(rec, ext.describe()))
            out.append((rec["name"], options, ext))
        return out

    def _what(self) -> str:
        return f"bundle {self.path}" if self.path else "bundle"

    def score_manifest(self, manifest_df: pd.DataFrame, store: str | os.PathLike | None = None, *,
                       extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None,
                       built: list | None = None) -> pd.DataFrame:
        """P(ALL), call and status of each manifest row (same order).

        Features are computed into ``store`` (only what it lacks), or a temporary store deleted
        afterwards. Returns ``manifest_df`` columns plus ``p_all`` (NaN where the image could not be
        featurised), ``pred`` ("all"/"hem"/"") and ``status`` ("ok" or the reason).
        """
        from blastscan.features.store import FeatureStore
        from blastscan.pipelines.extract import extract

        built = built if built is not None else self.extractors(extractor_options)
        out = manifest_df.reset_index(drop=True).copy()
        if len(out) == 0:
            out["p_all"], out["pred"], out["status"] = np.nan, "", ""
            return out
        unique = out.drop_duplicates("sha256")[["path", "sha256"]]
        with tempfile.TemporaryDirectory(prefix="blastscan-score-") as tmp:
            root = Path(store) if store is not None else Path(tmp)
            fstore = FeatureStore(root)
            blocks, names, failed = [], [], {}
            for name, options, ext in built:
                extract(unique, [name], root, jobs=jobs, extractor_options=options, progress=False)
                identity = ext.identity
                blocks.append(fstore.read(identity, unique["sha256"]))
                names += fstore.meta(identity)["feature_names"]
                for sha, reason in fstore.failures(identity).items():
                    failed.setdefault(sha, f"{name}: {reason}")
        if names != self.feature_names:
            raise BlastscanError(self._what(), "the features computed now have other columns than the model was "
                                               "trained on (the extractor changed without a version bump)")
        shas = out["sha256"].to_numpy()
        ok = np.array([all(s in b.index for b in blocks) and s not in failed for s in shas], dtype=bool)
        p = np.full(len(out), np.nan)
        if ok.any():
            X = np.hstack([b.loc[shas[ok]].to_numpy(dtype=np.float32) for b in blocks])
            p[ok] = _p_all(self.model, X)
        out["p_all"] = p
        out["pred"] = np.where(ok, np.where(p >= self.threshold, "all", "hem"), "")
        out["status"] = [("ok" if k else failed.get(s, "no features computed")) for s, k in zip(shas, ok)]
        return out

    def score_frame(self, inputs, store: str | os.PathLike | None = None, *,
                    extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None) -> pd.DataFrame:
        """One row per input image: ``path, sha256, subject, p_all, pred, status``; files that could not be
        read are included with their reason (``p_all`` NaN). For large batches use
        :func:`blastscan.pipelines.score.score`, which streams to a CSV."""
        manifest_df, failed = input_manifest(inputs)
        scored = self.score_manifest(manifest_df, store, extractor_options=extractor_options, jobs=jobs)
        cols = ["path", "sha256", "subject", "p_all", "pred", "status"]
        if "subject" not in scored:
            scored["subject"] = ""
        return pd.concat([scored[cols], failed[cols]], ignore_index=True) if len(failed) else scored[cols]

    def predict_proba(self, paths_or_manifest, store: str | os.PathLike | None = None,
                      extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None) -> np.ndarray:
        """P(ALL) per image; NaN where the image could not be featurised (:meth:`score_frame` says why).

        A manifest gives one value per row; a list of image files one value per file, in the given order;
        folders and CSVs are expanded (the order of :meth:`score_frame`).
        """
        frame = self.score_frame(paths_or_manifest, store, extractor_options=extractor_options, jobs=jobs)
        if isinstance(paths_or_manifest, pd.DataFrame):
            return frame["p_all"].to_numpy(dtype=float)[: len(paths_or_manifest)]
        items = [paths_or_manifest] if isinstance(paths_or_manifest, (str, os.PathLike)) else list(paths_or_manifest)
        if all(os.path.isfile(p) and not str(p).lower().endswith(".csv") for p in items):
            by_path = dict(zip(frame["path"], frame["p_all"]))
            return np.array([by_path.get(os.path.abspath(p), np.nan) for p in items], dtype=float)
        return frame["p_all"].to_numpy(dtype=float)

    def predict(self, paths_or_manifest, store=None, extractor_options=None, jobs=None) -> np.ndarray:
        """``"all"``/``"hem"`` per image at the bundle's threshold (``""`` where it could not be scored)."""
        p = self.predict_proba(paths_or_manifest, store, extractor_options, jobs)
        return np.where(np.isnan(p), "", np.where(p >= self.threshold, "all", "hem")).astype(object)

    def summary(self) -> str:
        """The model, its threshold and its training metrics, with the split they come from."""
        m = self.metadata
        tm = m["training_metrics"]
        d = m["training_data"]
        lines = [f"model: {m['feature_set']} / {m['classifier']} ({m['n_features']} features)",
                 f"trained on {d['n_images']} cells: {d['n_all']} ALL from {d['n_subjects_all']} subjects, "
                 f"{d['n_hem']} HEM from {d['n_subjects_hem']} subjects"
                 + (f" ({d['n_dropped']} cells without features left out)" if d.get("n_dropped") else ""),
                 f"threshold: P(ALL) >= {self.threshold:.4f} ({m['threshold']['rule_text']})"]
        met = tm.get("metrics")
        if met:
            def f(k):
                v = met.get(k)
                return "n/a" if v is None else f"{v:.3f}"

            lines.append(f"{tm['split']}: weighted F1 {f('weighted_f1')}, ALL recall {f('recall_all')}, "
                         f"specificity {f('specificity')}, ROC-AUC {f('roc_auc')}")
        lines += [f"note: {n}" for n in tm.get("notes", [])]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _config_options(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded config entries that are options of the extractor's factory (e.g. ``input_size``)."""
    import inspect

    from blastscan.features import base

    base.available_extractors()  # loads the built-in registry
    factory = base._REGISTRY.get(name)
    if factory is None:
        return {}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in config.items() if k in named}


def _identity_mismatch(recorded: Mapping, now: Mapping) -> str:
    diffs = []
    if str(recorded.get("version")) != str(now.get("version")):
        diffs.append(f"version {recorded.get('version')} at training, {now.get('version')} now")
    rc, nc = dict(recorded.get("config") or {}), dict(now.get("config") or {})
    for key in sorted(set(rc) | set(nc)):
        if rc.get(key) != nc.get(key):
            diffs.append(f"{key}: {rc.get(key)!r} at training, {nc.get(key)!r} now")
    detail = "; ".join(diffs) or "different configuration"
    hint = ("give the weight files used in training (--weights-dir)" if any("weight" in d for d in diffs)
            else "use the blastscan version and settings the bundle was made with")
    return (f"its '{recorded['name']}' features cannot be recomputed as in training ({recorded['identity']} then, "
            f"{now['identity']} now: {detail}); {hint}")


# ------------------------------------------------------------------------------------------------
def train_bundle(
    manifest_df: pd.DataFrame,
    feature_set: str,
    classifier,
    store: str | os.PathLike,
    *,
    params: Mapping[str, Any] | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    threshold_rule: str = "recall",
    target_recall: float = 0.90,
    seed: int = 0,
    inner_splits: int = 5,
    dataset: str | None = None,
    progress: bool = True,
) -> Bundle:
    """Fit ``classifier`` on every labelled row of ``manifest_df`` and wrap it as a :class:`Bundle`.

    The decision threshold is chosen on out-of-fold P(ALL) from a subject-disjoint ``inner_splits``-fold
    CV on the same training data (never on data to be scored); the out-of-fold metrics at that
    threshold are recorded as the bundle's training metrics, named by their split.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest; unlabelled rows are ignored.
    feature_set : str
        E.g. ``"handcrafted"`` or ``"handcrafted+inception_v3"``; features must be in ``store``.
    classifier : str, callable or estimator
        A name from :func:`blastscan.classifiers.available_classifiers` (or see
        :func:`blastscan.pipelines.evaluate.make_classifier`).
    store : path
        Feature store holding the features.
    params : dict, optional
        Classifier parameters.
    extractor_options : dict, optional
        ``weights_dir``, ``input_size``, ... as given to ``extract``.
    threshold_rule : {"recall", "f1"}
    target_recall : float
    seed : int
        Seeds the folds and the model.
    inner_splits : int
        Folds of the subject-disjoint CV that picks the threshold (fewer when a class has fewer subjects).
    dataset : str, optional
        Recorded, and used in the hint of a missing-features error.
    progress : bool
        Progress bar over the fits on stderr.
    """
    from tqdm.auto import tqdm

    from blastscan import provenance as prov
    from blastscan.pipelines.compare import _labelled_rows
    from blastscan.pipelines.evaluate import (_fit, choose_threshold, compute_metrics, fit_predict,
                                              make_classifier, plan_subject_folds)
    from blastscan.pipelines.extract import _clean_options, _extractor, load_features

    if threshold_rule not in _RULE_TEXT:
        raise BlastscanError("--threshold", f"unknown rule '{threshold_rule}'; choose recall or f1")
    if not 0 < float(target_recall) <= 1:
        raise BlastscanError("--target-recall", f"must be in (0, 1] (got {target_recall})")
    params = dict(params or {})
    data, _ = _labelled_rows(manifest_df)
    if len(data) == 0:
        raise BlastscanError(dataset or "manifest", "no labelled images (labels all/hem) to train on")
    fm = load_features(data, feature_set, store, extractor_options=extractor_options,
                       dataset_hint=dataset or "DATASET")
    if len(fm.rows) == 0:
        raise BlastscanError("--features", f"no labelled image has '{feature_set}' features")
    X, rows = fm.X.astype(np.float64), fm.rows  # fitted as scored (see _p_all)
    y = (rows["label"] == "all").to_numpy().astype(int)
    groups = rows["group"].to_numpy().astype(str)
    subjects = rows["subject"].to_numpy().astype(str)
    if len(np.unique(y)) < 2:
        raise BlastscanError(dataset or "manifest", "the training data holds one class only (need ALL and HEM)")

    notes: list[str] = []
    try:
        plan = plan_subject_folds(groups, y, inner_splits, seed, what="threshold folds")
    except BlastscanError as exc:
        plan = None
        notes.append(f"threshold left at 0.5 and no training metrics: {exc.why}")
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
        est = _fit(est, X, y, groups) or est
        bar.update(1)
    finally:
        bar.close()
    if oof is not None:
        threshold = float(choose_threshold(y, oof, rule=threshold_rule, target_recall=target_recall))
        metrics = compute_metrics(y, oof, threshold, subjects=subjects, groups=groups)
        split = f"training metrics, subject-disjoint {plan.n_splits}-fold OOF on the training data"
    else:
        threshold, metrics, split = 0.5, None, "none (too few subjects for a subject-disjoint split)"

    versions = prov.library_versions()
    options = _clean_options(extractor_options)
    extractors = [{**e, "kind": _extractor(e["name"], options).kind} for e in fm.extractors]
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "blastscan_version": versions.get("blastscan"),
        "created": prov.timestamp(),
        "git_revision": prov.git_revision(),
        "feature_set": feature_set,
        "feature_names": list(fm.feature_names),
        "n_features": int(X.shape[1]),
        "extractors": extractors,
        "extractor_options": options,
        "classifier": classifier if isinstance(classifier, str) else getattr(classifier, "__name__",
                                                                             type(classifier).__name__),
        "params": params,
        "seed": int(seed),
        "threshold": {"value": threshold, "rule": threshold_rule, "target_recall": float(target_recall),
                      "rule_text": _RULE_TEXT[threshold_rule].format(target=float(target_recall)),
                      "chosen_on": split},
        "training_metrics": {"split": split, "n_splits": plan.n_splits if plan else 0, "metrics": metrics,
                             "notes": notes},
        "training_data": {
            "dataset": str(dataset) if dataset is not None else None,
            "manifest_sha256": prov.manifest_hash(rows),
            "n_images": int(len(y)), "n_all": int(y.sum()), "n_hem": int(len(y) - y.sum()),
            "n_subjects": int(len(set(subjects))), "n_groups": int(len(set(groups))),
            "n_subjects_all": int(len(set(subjects[y == 1]))), "n_subjects_hem": int(len(set(subjects[y == 0]))),
            "n_dropped": int(len(fm.dropped)),
        },
        "versions": versions,
    }
    bundle = Bundle(model=est, metadata=prov.to_jsonable(metadata))
    # what `blastscan view` shows beside a cell: training distributions, importances, reference cells
    from blastscan.pipelines.view import training_reference
    bundle.extras["view"] = training_reference(est, X, rows, list(fm.feature_names), seed=seed)
    return bundle


# ------------------------------------------------------------------------------------------------
def save_bundle(bundle: Bundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` (joblib) and its sidecar ``<name>.json``, both atomically.

    The sidecar holds the metadata and the sha256 of the bundle file; :func:`load_bundle` checks it.
    """
    import joblib

    from blastscan import provenance as prov
    from blastscan.features.store import atomic_path, atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() == ".json":
        raise BlastscanError(str(path), "the bundle needs another suffix than .json (its sidecar is .json)")
    metadata = prov.to_jsonable(bundle.metadata)
    try:
        with atomic_path(path) as tmp:
            joblib.dump({"format": FORMAT, "format_version": FORMAT_VERSION, "model": bundle.model,
                         "metadata": metadata, "extras": bundle.extras}, tmp, compress=3)
            digest, size = file_sha256(tmp), os.path.getsize(tmp)
            sidecar = {"bundle_file": path.name, "bundle_sha256": digest, "bundle_bytes": size,
                       "warning": TRUST_WARNING, "metadata": metadata}
            # the sidecar goes first: a crash between the two renames leaves a sidecar that refuses the
            # old bundle, never an unchecked new one
            atomic_write_bytes(sidecar_path(path), json.dumps(sidecar, indent=2, allow_nan=False).encode())
    except OSError as exc:
        raise BlastscanError(str(path), f"cannot write ({exc.strerror or exc})") from None
    bundle.path = path
    return path


def _check_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    refuse = "refusing to unpickle it (a joblib file can run code); pass trust=True (--trust) only if you trust it"
    if not side.is_file():
        raise BlastscanError(str(path), f"no sidecar {side.name} beside it to check its hash; {refuse}")
    try:
        sidecar = json.loads(side.read_text())
        expected = sidecar["bundle_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BlastscanError(str(side), f"unreadable bundle sidecar ({type(exc).__name__}: {exc}); {refuse}") from None
    if file_sha256(path) != expected:
        raise BlastscanError(str(path), f"its sha256 does not match {side.name}: the file was changed or damaged "
                                        f"after it was written; {refuse}")
    return sidecar


# libraries whose version can change predictions, and how much of the version must agree
def _version_key(version: str | None, parts: int) -> tuple:
    if not version:
        return ()
    return tuple(version.split("+")[0].split(".")[:parts])


def _version_checks(metadata: Mapping) -> list[tuple[str, int]]:
    checks = [("scikit-learn", 2), ("numpy", 1)]
    clf = str(metadata.get("classifier", ""))
    kinds = {e.get("kind") for e in metadata.get("extractors", [])}
    known = clf in ("logreg", "svm", "xgboost", "fcn", "fcn_svm")
    if "xgboost" in clf or not known:
        checks.append(("xgboost", 2))
    if clf.startswith("fcn") or "batch" in kinds or not known:
        checks += [("tensorflow", 2), ("keras", 2)]
    if "per_image" in kinds:
        checks.append(("scikit-image", 2))
    return checks


def version_warnings(metadata: Mapping) -> list[str]:
    """Mismatches between the library versions recorded in a bundle and the installed ones."""
    from blastscan.provenance import library_versions

    then = metadata.get("versions") or {}
    now = library_versions()
    out = []
    for lib, parts in _version_checks(metadata):
        a, b = then.get(lib), now.get(lib)
        if a and _version_key(a, parts) != _version_key(b, parts):
            out.append(f"{lib} {a} made this bundle, {b or 'none'} is installed: predictions may differ")
    return out


def load_bundle(path: str | os.PathLike, trust: bool = False) -> Bundle:
    """Load a bundle written by :func:`save_bundle`.

    Before unpickling, the file's sha256 is checked against its sidecar ``<name>.json``; a missing
    sidecar or a mismatch is refused unless ``trust=True``. Library versions that differ from those
    recorded in a way that could change predictions are reported (``BundleWarning`` and
    ``Bundle.warnings``). Only load bundles you trust: a joblib file can run code when loaded.
    """
    import joblib

    path = Path(path)
    if not path.is_file():
        raise BlastscanError(str(path), "no such bundle file")
    sidecar = None if trust else _check_sidecar(path)
    try:
        content = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways (damaged file, missing library)
        raise BlastscanError(str(path), f"cannot load the bundle ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise BlastscanError(str(path), "not a blastscan bundle")
    if int(content.get("format_version", 0)) > FORMAT_VERSION:
        raise BlastscanError(str(path), f"bundle format {content['format_version']} is newer than this blastscan "
                                        f"reads ({FORMAT_VERSION}); upgrade blastscan")
    bundle = Bundle(model=content["model"], metadata=content["metadata"], path=path,
                    extras=dict(content.get("extras") or {}))
    bundle.warnings = version_warnings(bundle.metadata)
    if sidecar is not None and sidecar.get("metadata") != bundle.metadata:
        bundle.warnings.append(f"{sidecar_path(path).name} describes other metadata than the bundle holds; "
                               "the bundle's own is used")
    for w in bundle.warnings:
        warnings.warn(f"{path}: {w}", BundleWarning, stacklevel=2)
    return bundle


# ------------------------------------------------------------------------------------------------
def _read_run(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        raise BlastscanError(str(run_dir), "not a compare run folder (no run.json)") from None
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(run_dir / "run.json"), f"unreadable ({exc})") from None


def export_run(
    run_dir: str | os.PathLike,
    config_name: str,
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    inner_splits: int = 5,
    progress: bool = True,
) -> Bundle:
    """Refit configuration ``config_name`` (e.g. ``"handcrafted/svm"``) of a compare run on all the
    labelled images the run used, and save it as a bundle at ``out``.

    The run's parameters, feature store, extractor options, seed and threshold rule are reused;
    ``store`` and ``extractor_options`` override the recorded ones (e.g. when the store moved).
    """
    run_dir = Path(run_dir)
    run = _read_run(run_dir)
    configs = {c["name"]: c for c in run.get("configs", [])}
    if config_name not in configs:
        raise BlastscanError(f"--config {config_name}", f"not in this run; choose from: {', '.join(configs) or 'none'}")
    config = configs[config_name]
    try:
        manifest = pd.read_parquet(run_dir / run.get("manifest", "manifest.parquet"))
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(run_dir / run.get("manifest", "manifest.parquet")), f"unreadable ({exc})") from None
    used = manifest[manifest["used"].fillna(False).astype(bool)].drop(columns=["used"])
    store = Path(store) if store is not None else Path(run["store"])
    if not store.is_dir():
        raise BlastscanError(str(store), "the run's feature store is not there; give its new place (--store)")
    options = {**(run.get("extractor_options") or {}), **{k: v for k, v in (extractor_options or {}).items()
                                                        if v is not None}}
    threshold = run.get("threshold") or {}
    bundle = train_bundle(used, config["feature_set"], config["classifier"], store, params=config.get("params"),
                          extractor_options=options, threshold_rule=threshold.get("rule", "recall"),
                          target_recall=float(threshold.get("target_recall", 0.90)), seed=int(run.get("seed", 0)),
                          inner_splits=inner_splits, dataset=run.get("dataset"), progress=progress)
    run_hash = (run.get("data") or {}).get("manifest_sha256")
    bundle.metadata["source_run"] = {
        "run_dir": str(run_dir), "config": config_name, "config_sha256": run.get("config_sha256"),
        "run_manifest_sha256": run_hash,
        "same_images_as_run": run_hash == bundle.metadata["training_data"]["manifest_sha256"],
    }
    save_bundle(bundle, out)
    return bundle
