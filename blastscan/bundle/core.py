"""The bundle type and its joblib format: one file holding a fitted model and everything needed to score new
cells with it (the scoring itself is :mod:`blastscan.bundle.scoring`; the data-only format
:mod:`blastscan.bundle.data_only`).

A bundle holds the fitted pipeline, the feature set's extractor specs (name, version, identity, config
incl. the weights hash, and the options that rebuild it), the column order, the decision threshold and
how it was chosen, training metrics with their split, a hash of the training manifest, library versions
and the creation time. A human-readable sidecar ``<name>.json`` repeats the metadata and records the
sha256 of the bundle file.

A joblib file is a pickle: loading one can run arbitrary code. :func:`load_bundle` refuses a file whose
sidecar is missing or whose hash does not match it, unless ``trust=True``. The check catches damaged or
swapped files; it is not a signature (anyone can write a new sidecar), so load only bundles you trust.
Bundles of format 1 (blastscan before its current code layout) are refused with a one-line message.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import joblib
import numpy as np
import pandas as pd

from blastscan import __version__
from blastscan._io import atomic_path, atomic_write_bytes, file_sha256
from blastscan.bundle.data_only import SUFFIX, is_data_only, load_data_only, save_data_only
from blastscan.bundle.scoring import score_frame
from blastscan.classifiers import classifier_libraries, predict_p_all
from blastscan.errors import BlastscanError
from blastscan.evaluation.calibration import apply_calibration
from blastscan.features.featureset import FeatureSet
from blastscan.options import DeepOptions
from blastscan.provenance import library_versions, to_jsonable

__all__ = ["FORMAT", "FORMAT_VERSION", "TRUST_WARNING", "JOBLIB_NOTE", "Bundle", "BundleWarning", "save_bundle", "load_bundle",
           "sidecar_path", "version_warnings", "blastscan_version_check"]

FORMAT = "blastscan-bundle"
FORMAT_VERSION = 2
TRUST_WARNING = ("A bundle is a pickle (joblib): loading one can run any code. Load only bundles you made or "
                 "got from someone you trust.")

JOBLIB_NOTE = ("note: {path} is a joblib bundle: loading it runs code from the file. To share a model, write the "
               "data-only bundle (train/export --out model.bsb: JSON + ONNX, no code).")


class BundleWarning(UserWarning):
    """A bundle loaded, but something (e.g. a library version) differs from when it was made."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.joblib`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


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
        ``blastscan view`` shows (see :func:`blastscan.bundle.reference.training_reference`).
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
    def calibration(self) -> dict | None:
        """The post-hoc map of the model's P(ALL) (plain numbers; None: P(ALL) as the model gives it)."""
        return self.metadata.get("calibration")

    def proba(self, X) -> np.ndarray:
        """Calibrated P(ALL) of feature rows ``X``: the model, then the bundle's calibration map."""
        return apply_calibration(predict_p_all(self.model, X), self.calibration)

    @property
    def feature_set(self) -> str:
        return self.metadata["feature_set"]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    # -- features -------------------------------------------------------------------------------
    def features(self, extractor_options: DeepOptions | Mapping[str, Any] | None = None):
        """The bundle's :class:`~blastscan.features.featureset.FeatureSet`, rebuilt from its recorded
        extractor specs; ``extractor_options`` say where things are now (e.g. ``weights_dir``).

        Raises ``BlastscanError`` when an extractor built now has another identity than at training
        (other weights, version or settings): its features would not be those the model learned from.
        """
        trained = DeepOptions.from_mapping(self.metadata.get("extractor_options"), self.origin()).replace(
            precision=None, engine=None)  # the records carry what made the features
        runtime = trained.replace(**DeepOptions.from_mapping(extractor_options).changed())
        if self.extras.get("embedded_backbones"):  # a data-only bundle's own backbone graphs: no weight files
            runtime = runtime.replace(embedded_backbones=self.extras["embedded_backbones"])
        return FeatureSet.from_specs(self.feature_set, self.metadata["extractors"], runtime, what=self.origin())

    def origin(self) -> str:
        """How messages name this bundle: ``bundle PATH``."""
        return f"bundle {self.path}" if self.path else "bundle"

    def predict_proba(self, paths_or_manifest, store: str | os.PathLike | None = None,
                      extractor_options: Mapping[str, Any] | None = None, jobs: int | None = None) -> np.ndarray:
        """P(ALL) per image; NaN where the image could not be featurised
        (:func:`blastscan.bundle.scoring.score_frame` says why).

        A manifest gives one value per row; a list of image files one value per file, in the given order;
        folders and CSVs are expanded (the order of ``score_frame``).
        """
        frame = score_frame(self, paths_or_manifest, store, extractor_options=extractor_options, jobs=jobs)
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
        deep = [f"{e['name']} {e['precision']} on {e['engine']}" for e in m.get("extractors", []) if e.get("engine")]
        if deep:
            lines.append(f"deep features: {', '.join(deep)} (score follows the precision; --precision overrides)")
        op = m.get("operating_point")
        if op and op.get("fold_thresholds"):
            ft = op["fold_thresholds"]
            lines.append(f"the same procedure's thresholds in the {len(ft)} outer folds: {min(ft):.4f}-{max(ft):.4f} "
                         f"(median {float(np.median(ft)):.4f}, spread {max(ft) - min(ft):.3f})")
        if op:
            def f(k):
                v = op.get(k)
                ci = op.get(f"{k}_ci")
                txt = "n/a" if v is None else f"{v:.3f}"
                return txt + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci and ci[0] == ci[0] else "")

            lines.append(f"expected on new patients ({op['split']}; 95% intervals from {op.get('n_boot')} subject "
                         f"bootstraps): ALL recall {f('recall_all')}, specificity {f('specificity')}, "
                         f"weighted F1 {f('weighted_f1')}, ROC-AUC {f('roc_auc')}")
        elif tm.get("metrics"):
            met = tm["metrics"]

            def g(k):
                v = met.get(k)
                return "n/a" if v is None else f"{v:.3f}"

            lines.append(f"{tm['split']}: weighted F1 {g('weighted_f1')}, ALL recall {g('recall_all')}, "
                         f"specificity {g('specificity')}, ROC-AUC {g('roc_auc')}")
        if m.get("calibration"):
            lines.append("P(ALL) is calibrated (Platt map fitted on subject-disjoint out-of-fold P(ALL) of the "
                         "training subjects)")
        lines += [f"note: {n}" for n in tm.get("notes", [])]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def save_bundle(bundle: Bundle, path: str | os.PathLike, *, embed: bool = True,
                extractor_options: Mapping[str, Any] | None = None) -> Path:
    """Write ``bundle`` to ``path`` (joblib) and its sidecar ``<name>.json``, both atomically.

    The sidecar holds the metadata and the sha256 of the bundle file; :func:`load_bundle` checks it.
    A ``.bsb`` path writes the data-only bundle instead (:mod:`blastscan.bundle.data_only`: JSON + ONNX, no
    sidecar); ``embed`` (its backbones' graphs inside) and ``extractor_options`` (where the weights are)
    apply to it only.
    """
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return save_data_only(bundle, path, embed=embed, extractor_options=extractor_options)
    if path.suffix.lower() == ".json":
        raise BlastscanError(str(path), "the bundle needs another suffix than .json (its sidecar is .json)")
    metadata = to_jsonable(bundle.metadata)
    try:
        with atomic_path(path) as tmp:
            extras = {k: v for k, v in bundle.extras.items() if k != "embedded_backbones"}
            joblib.dump({"format": FORMAT, "format_version": FORMAT_VERSION, "model": bundle.model,
                         "metadata": metadata, "extras": extras}, tmp, compress=3)
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
    if not isinstance(expected, str):
        raise BlastscanError(str(side), f"unreadable bundle sidecar (bundle_sha256 is not a string); {refuse}")
    if not isinstance(sidecar.get("metadata", {}), dict):
        raise BlastscanError(str(side), f"unreadable bundle sidecar (metadata is not an object); {refuse}")
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
    """(library, version parts that must agree) for what can change this bundle's predictions."""
    checks: list[tuple[str, int]] = []  # scikit-learn and numpy come first, from every family's list
    clf = str(metadata.get("classifier", ""))
    # a vote's predictions depend on its members' libraries
    members = ((metadata.get("params") or {}).get("members") or []) if clf == "vote" else []
    for name in [m.get("classifier", "") for m in members] or [clf]:
        try:
            libs = classifier_libraries(str(name))
        except BlastscanError:  # a classifier this blastscan does not know: every library the registry names
            libs = classifier_libraries()
        checks += [c for c in libs if c not in checks]
    kinds = {e.get("kind") for e in metadata.get("extractors", [])}
    if "batch" in kinds:
        checks += [c for c in (("tensorflow", 2), ("keras", 2)) if c not in checks]
    if "per_image" in kinds:
        checks.append(("scikit-image", 2))
    return checks


def blastscan_version_check(recorded: str | None, what: str, installed: str | None = None) -> str | None:
    """Compare the blastscan version that made a bundle with this one.

    Returns a warning for another minor version (features or defaults may have changed), None when the
    major and minor agree; raises for another major version (the bundle's meaning is not kept across
    majors) and for a bundle made by a newer blastscan than this one.
    """
    installed = installed or __version__
    if recorded is not None and not isinstance(recorded, str):
        raise BlastscanError(what, f"records blastscan_version {recorded!r}, not a version string such as "
                                   f"\"{installed}\"; make the bundle again with `blastscan train` or `export`")
    if not recorded:
        return "the bundle does not record which blastscan made it: predictions may differ"
    try:
        then = tuple(int(x) for x in _version_key(recorded, 2))
        now = tuple(int(x) for x in _version_key(installed, 2))
    except ValueError:
        return f"blastscan {recorded} made this bundle, {installed} is installed: predictions may differ"
    if then[:1] != now[:1]:
        raise BlastscanError(what, f"made by blastscan {recorded}, another major version than the installed "
                                   f"{installed}; use blastscan {then[0]}.x, or make it again with `blastscan train`")
    if then > now:
        raise BlastscanError(what, f"made by blastscan {recorded}, newer than the installed {installed}; "
                                   "upgrade blastscan")
    if then != now:
        return f"blastscan {recorded} made this bundle, {installed} is installed: predictions may differ"
    return None


def version_warnings(metadata: Mapping) -> list[str]:
    """Mismatches between the library versions recorded in a bundle and the installed ones."""
    then = metadata.get("versions") or {}
    now = library_versions()
    out = []
    for lib, parts in _version_checks(metadata):
        a, b = then.get(lib), now.get(lib)
        if a and _version_key(a, parts) != _version_key(b, parts):
            out.append(f"{lib} {a} made this bundle, {b or 'none'} is installed: predictions may differ")
    return out


def _check_content(content, path: Path) -> None:
    """One-line errors for what an unpickled bundle must hold (also under ``--trust``: a crafted or
    hand-made file must not end in a traceback later): format, a model that gives probabilities, and
    metadata with a threshold in [0, 1], the feature set and the extractors."""
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise BlastscanError(str(path), "not a blastscan bundle")
    version = content.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BlastscanError(str(path), f"not a blastscan bundle (format_version {version!r} is not a whole number)")
    if version != FORMAT_VERSION:
        return  # older or newer formats: the caller says which
    model, meta = content.get("model"), content.get("metadata")
    if model is None or not callable(getattr(model, "predict_proba", None)):
        raise BlastscanError(str(path), f"holds no usable model ({type(model).__name__} has no predict_proba); "
                                        "make it again with `blastscan train` or `blastscan export`")
    if not isinstance(meta, dict):
        raise BlastscanError(str(path), "its metadata is not an object; make it again with `blastscan train`")
    threshold = meta.get("threshold")
    value = threshold.get("value") if isinstance(threshold, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise BlastscanError(str(path), "records no decision threshold in [0, 1] (metadata threshold.value); "
                                        "make it again with `blastscan train` or `blastscan export`")
    for key, kind in (("feature_set", str), ("feature_names", list), ("extractors", list)):
        if not isinstance(meta.get(key), kind):
            raise BlastscanError(str(path), f"its metadata has no {key} ({kind.__name__}); make it again with "
                                            "`blastscan train` or `blastscan export`")
    if content.get("extras") is not None and not isinstance(content["extras"], dict):
        raise BlastscanError(str(path), "its extras are not an object; make it again with `blastscan train`")


def load_bundle(path: str | os.PathLike, trust: bool = False) -> Bundle:
    """Load a bundle written by :func:`save_bundle`.

    A data-only bundle (a ``.bsb`` file, or any zip) is read by :func:`blastscan.bundle.data_only.load_data_only`:
    JSON and ONNX only, every entry checked against its manifest; ``trust`` does not apply to it.

    Before unpickling, the file's sha256 is checked against its sidecar ``<name>.json``; a missing
    sidecar or a mismatch is refused unless ``trust=True``. Library versions that differ from those
    recorded in a way that could change predictions are reported (``BundleWarning`` and
    ``Bundle.warnings``). Only load bundles you trust: a joblib file can run code when loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise BlastscanError(str(path), "no such bundle file")
    if is_data_only(path):  # JSON + ONNX: no pickle, checked against its own manifest (trust changes nothing)
        model, metadata, extras = load_data_only(path)
        own = blastscan_version_check(metadata.get("blastscan_version"), str(path))
        bundle = Bundle(model=model, metadata=metadata, path=path, extras=extras, warnings=[own] if own else [])
        for w in bundle.warnings:
            warnings.warn(f"{path}: {w}", BundleWarning, stacklevel=2)
        return bundle
    sidecar = None if trust else _check_sidecar(path)
    if sidecar is not None:  # refused before the pickle is opened when the sidecar says so already
        blastscan_version_check((sidecar.get("metadata") or {}).get("blastscan_version"), str(sidecar_path(path)))
    try:
        content = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways (damaged file, missing library)
        raise BlastscanError(str(path), f"cannot load the bundle ({type(exc).__name__}: {exc})") from None
    _check_content(content, path)
    version = content["format_version"]
    if version > FORMAT_VERSION:
        raise BlastscanError(str(path), f"bundle format {version} is newer than this blastscan "
                                        f"reads ({FORMAT_VERSION}); upgrade blastscan")
    if version < FORMAT_VERSION:
        raise BlastscanError(str(path), f"bundle format {version} was written by an older blastscan whose code "
                                        f"layout changed; make it again with `blastscan train` or `blastscan export`")
    bundle = Bundle(model=content["model"], metadata=content["metadata"], path=path,
                    extras=dict(content.get("extras") or {}))
    bundle.warnings = version_warnings(bundle.metadata)
    own = blastscan_version_check(bundle.metadata.get("blastscan_version"), str(path))
    if own:
        bundle.warnings.insert(0, own)
    if sidecar is not None and sidecar.get("metadata") != bundle.metadata:
        bundle.warnings.append(f"{sidecar_path(path).name} describes other metadata than the bundle holds; "
                               "the bundle's own is used")
    for w in bundle.warnings:
        warnings.warn(f"{path}: {w}", BundleWarning, stacklevel=2)
    return bundle
