"""Train one model on a whole dataset and (optionally) save it as a scoring bundle: ``blastscan train``.

Builds the manifest, computes the features the store lacks, fits on every labelled image and picks the
threshold on subject-disjoint out-of-fold predictions of the training data (see
:func:`blastscan.pipelines.bundle.train_bundle`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from blastscan.errors import BlastscanError
from blastscan.pipelines.bundle import Bundle, save_bundle, train_bundle

__all__ = ["train"]


def train(
    dataset: str | os.PathLike,
    feature_set: str,
    classifier: str,
    store: str | os.PathLike,
    *,
    params: Sequence[str] | Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    threshold_rule: str = "recall",
    target_recall: float = 0.90,
    seed: int = 0,
    inner_splits: int = 5,
    jobs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Bundle:
    """Fit ``classifier`` on ``feature_set`` features of every labelled image of ``dataset``.

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
    out : path, optional
        Write the bundle (and its ``.json`` sidecar) here.
    extractor_options, threshold_rule, target_recall, seed, inner_splits
        See :func:`blastscan.pipelines.bundle.train_bundle`.
    jobs : int, optional
        Processes for reading images and per-image features.
    echo : callable
        Where progress lines go.
    """
    from blastscan.dataset import build_manifest, inspect_cache, labelled
    from blastscan.pipelines.compare import parse_params
    from blastscan.pipelines.extract import extract

    clf_params = _params_for(classifier, params, parse_params)
    manifest = build_manifest(dataset, jobs=jobs, progress=progress, cache=inspect_cache(store))
    if len(manifest.problems):
        echo(f"{len(manifest.problems)} problems in {dataset} (see `blastscan data`); e.g. {manifest.problems[0]}")
    data = labelled(manifest.df)
    if len(data) == 0:
        raise BlastscanError(str(dataset), "no labelled images (labels all/hem) to train on")
    summary = extract(data, [feature_set], store, jobs=jobs, extractor_options=extractor_options, progress=progress)
    echo(summary.format(max_failures=5))
    bundle = train_bundle(data, feature_set, classifier, store, params=clf_params,
                          extractor_options=extractor_options, threshold_rule=threshold_rule,
                          target_recall=target_recall, seed=seed, inner_splits=inner_splits, dataset=str(dataset),
                          progress=progress)
    echo(bundle.summary())
    if out is not None:
        save_bundle(bundle, out)
        echo(f"bundle: {out} (+ {bundle.path.with_suffix('.json').name})")
    return bundle


def _params_for(classifier: str, params, parse_params) -> dict[str, Any]:
    if not params:
        return {}
    if isinstance(params, Mapping) and not all(isinstance(v, Mapping) for v in params.values()):
        return dict(params)  # already the classifier's own parameters
    parsed = parse_params(params)
    other = sorted(set(parsed) - {classifier})
    if other:
        raise BlastscanError(f"--param {other[0]}.*", f"'{other[0]}' is not the trained classifier ({classifier})")
    return parsed.get(classifier, {})
