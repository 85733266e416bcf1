"""Grouped tuning: a small search over a classifier's parameters, chosen on subject-disjoint inner folds of
the training data only (``compare --tune``, ``train --tune``), so an outer test fold never influences a
choice.

:class:`Tuned` is an estimator: fitted on a training part, it splits that part by subject group, scores
every candidate by the ROC-AUC of its pooled out-of-fold P(ALL), refits the best on the whole part and
records what it chose (``best_params_``, ``scores_``).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

from blastscan.classifiers.base import BinaryClassifier, inner_folds

__all__ = ["GRIDS", "grid_for", "Tuned"]

#: The searched values per classifier: small on purpose (2 cores; few subjects make choices noisy).
GRIDS: dict[str, dict[str, list]] = {
    "logreg": {"C": [0.001, 0.01, 0.1, 1.0]},
    "svm": {"C": [0.3, 1.0, 3.0]},
    "svm_pca": {"C": [0.3, 1.0, 3.0], "n_components": [64, 128]},
    "xgboost": {"max_depth": [2, 4], "learning_rate": [0.05, 0.1], "n_estimators": [200, 300],
                "subsample": [0.7, 1.0]},
    "fcn": {"hidden": [128, 256], "dropout": [0.3, 0.5], "weight_decay": [0.0, 1e-4]},
}


def grid_for(classifier: str) -> list[dict[str, Any]]:
    """Every candidate of ``classifier``'s grid (``[{}]`` when it has none: nothing to tune)."""
    from blastscan.classifiers import classifier_defaults

    known = set(classifier_defaults(classifier))
    grid = {k: v for k, v in GRIDS.get(classifier, {}).items() if k in known}
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


class Tuned(BinaryClassifier):
    """``classifier`` with the candidate of ``grid`` that scored best on grouped inner folds.

    Parameters
    ----------
    classifier : str
        A classifier of the registry.
    params : dict
        Its fixed parameters (a candidate's values override them).
    grid : list of dict, optional
        Candidates (default: :func:`grid_for`).
    inner_splits : int
        Subject-grouped folds of the search.
    random_state : int

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    best_params_ : dict
        The chosen candidate.
    scores_ : list of (dict, float)
        Each candidate and its pooled out-of-fold ROC-AUC on the inner folds.
    model_ : the refitted estimator
    """

    def __init__(self, classifier="svm", params=None, grid=None, inner_splits=3, random_state=0):
        self.classifier = classifier
        self.params = params
        self.grid = grid
        self.inner_splits = inner_splits
        self.random_state = random_state

    def _build(self, candidate: Mapping[str, Any]):
        from blastscan.classifiers import get_classifier

        return get_classifier(self.classifier, random_state=self.random_state,
                              **{**dict(self.params or {}), **dict(candidate)})

    def _fit(self, X, y01, groups):
        from sklearn.metrics import roc_auc_score

        from blastscan.classifiers import fit_classifier

        candidates = list(self.grid) if self.grid is not None else grid_for(self.classifier)
        folds, self.search_note_ = inner_folds(y01, groups, self.inner_splits, self.random_state)
        self.scores_ = []
        for cand in candidates if len(candidates) > 1 else []:
            oof = np.full(len(y01), np.nan)
            for tr, te in folds:
                est = fit_classifier(self._build(cand), X[tr], y01[tr], None if groups is None else groups[tr])
                oof[te] = est.predict_proba(X[te])[:, list(est.classes_).index(1)]
            self.scores_.append((dict(cand), float(roc_auc_score(y01, oof))))
        best = max(self.scores_, key=lambda cs: cs[1])[0] if self.scores_ else dict(candidates[0])
        self.best_params_ = best
        self.model_ = fit_classifier(self._build(best), X, y01, groups)

    def _proba1(self, X):
        return self.model_.predict_proba(X)[:, list(self.model_.classes_).index(1)]
