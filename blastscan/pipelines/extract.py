"""Extract once: compute the features a manifest lacks for one or more feature sets (``blastscan extract``).

Every extractor named by the feature sets runs once, over the images missing from its store table; see
:class:`blastscan.features.featureset.FeatureSet` for the guarantees (missing rows only, chunks
published atomically, an interrupted run keeps what it finished).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import pandas as pd

from blastscan.features.featureset import ExtractSummary, FeatureMatrix, FeatureSet, FeatureSetSpec
from blastscan.options import DeepOptions

__all__ = ["extract", "load_features", "features_for"]


def extract(
    manifest_df: pd.DataFrame,
    feature_sets: Sequence[FeatureSetSpec | str] | str,
    store: str | os.PathLike,
    *,
    jobs: int | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> ExtractSummary:
    """Compute the features of every image in ``manifest_df`` that the store lacks.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (columns ``path`` and ``sha256`` at least).
    feature_sets : list of FeatureSetSpec or str, or str
        Feature sets such as ``["handcrafted", "inception_v3+vgg16"]`` (or a comma-separated string);
        every extractor they name is run once.
    store : path
        Feature store folder.
    jobs : int, optional
        Worker processes for per-image extractors (default: all cores).
    extractor_options : DeepOptions or dict, optional
        The deep backbones' options (:class:`~blastscan.options.DeepOptions`; a dict's keys are its fields).
    progress : bool
        Show a progress bar with rate and ETA on stderr.
    retry_failed : bool
        Forget recorded failures and try those images again.

    Returns
    -------
    ExtractSummary
    """
    # Every extractor is built (and validated) before anything is computed: a missing weight file stops
    # the run at once, not after an hour of handcrafted features.
    fs = FeatureSet.union(feature_sets, extractor_options)
    return fs.ensure(manifest_df, store, jobs=jobs, progress=progress, retry_failed=retry_failed)


def load_features(
    manifest_df: pd.DataFrame,
    feature_set: FeatureSetSpec | str,
    store: str | os.PathLike,
    *,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    dataset_hint: str = "DATASET",
) -> FeatureMatrix:
    """The features of ``feature_set`` for the rows of ``manifest_df`` (see :meth:`FeatureSet.read`)."""
    fs = FeatureSet(feature_set, DeepOptions.from_mapping(extractor_options))
    return fs.read(manifest_df, store, dataset_hint=dataset_hint)


def features_for(
    manifest_df: pd.DataFrame,
    feature_set: FeatureSetSpec | str,
    store: str | os.PathLike,
    *,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    dataset_hint: str = "DATASET",
) -> tuple[ExtractSummary, FeatureMatrix]:
    """Compute what the store lacks for ``feature_set``, then read its matrix: what ``compare`` and
    ``train`` do so that no command depends on another having run first."""
    fs = FeatureSet(feature_set, DeepOptions.from_mapping(extractor_options))
    return fs.ensure_and_read(manifest_df, store, jobs=jobs, progress=progress, dataset_hint=dataset_hint)
