"""Bundles: a fitted model and everything needed to score new cells with it, stored in one of two formats.

:mod:`~blastscan.bundle.core` holds the :class:`Bundle` type and the joblib format (save, load, the
sidecar hash and version checks); :mod:`~blastscan.bundle.data_only` the data-only format (``.bsb``:
JSON + ONNX, no pickle); :mod:`~blastscan.bundle.onnx_model` a fitted classifier as one ONNX graph;
:mod:`~blastscan.bundle.scoring` the scoring with a bundle (``blastscan score`` and the page share it);
:mod:`~blastscan.bundle.reference` the training reference a bundle carries for the page. The names below
are the package's public API.
"""

from blastscan.bundle.core import (FORMAT, FORMAT_VERSION, JOBLIB_NOTE, TRUST_WARNING, Bundle, BundleWarning,
                                   blastscan_version_check, load_bundle, save_bundle, sidecar_path,
                                   version_warnings)

__all__ = ["FORMAT", "FORMAT_VERSION", "TRUST_WARNING", "JOBLIB_NOTE", "Bundle", "BundleWarning", "save_bundle",
           "load_bundle", "sidecar_path", "version_warnings", "blastscan_version_check"]
