"""Grouped tuning: a small search over a classifier's parameters, chosen on subject-disjoint inner folds of
the training data only (``compare --tune``, ``train --tune``), so an outer test fold never influences a
choice.

:class:`Tuned` is an estimator: fitted on a training part, it splits that part by subject group
(:func:`~blastscan.classifiers.base.inner_folds`) and hands those folds to scikit-learn's ``GridSearchCV``,
which scores every candidate by its mean ROC-AUC over the inner test folds, refits the best on the whole
part, and records what it chose (``best_params_``, ``scores_``).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

from sklearn.model_selection import GridSearchCV

from blastscan.classifiers import classifier_defaults, get_classifier, group_fit_params, predict_p_all
from blastscan.classifiers.base import BinaryClassifier, Integral, Interval, inner_folds
from blastscan.errors import BlastscanError

__all__ = ["GRIDS", "grid_for", "Tuned"]

#: The searched values per classifier: small on purpose (2 cores; few subjects make choices noisy).
GRIDS: dict[str, dict[str, list]] = {
    "logreg": {"C": [0.001, 0.01, 0.1, 1.0]},
    "svm": {"C": [0.3, 1.0, 3.0]},
    "svm_pca": {"C": [0.3, 1.0, 3.0], "n_components": [64, 128]},
    "xgboost": {"max_depth": [2, 4], "learning_rate": [0.05, 0.1], "n_estimators": [200, 300],
                "subsample": [0.7, 1.0]},
    "fcn": {"hidden": [128, 256], "dropout": [0.3, 0.5]},
}


def grid_for(classifier: str) -> list[dict[str, Any]]:
    """Every candidate of ``classifier``'s grid (``[{}]`` when it has none: nothing to tune).

    Raises ``BlastscanError`` for an unknown classifier, or a grid naming a parameter it does not have (a
    grid key is never dropped silently)."""
    known = classifier_defaults(classifier)
    grid = GRIDS.get(classifier, {})
    unknown = sorted(set(grid) - set(known))
    if unknown:
        raise BlastscanError(f"tuning grid of '{classifier}'", f"unknown parameter '{unknown[0]}'; valid: "
                                                               f"{', '.join(known)}")
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
        Candidates (default: :func:`grid_for`); each is checked as :func:`get_classifier` checks parameters.
    inner_splits : int
        Subject-grouped folds of the search.
    random_state : int

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    best_params_ : dict
        The chosen candidate (the first of the best, in candidate order).
    scores_ : list of (dict, float)
        Each candidate and its mean ROC-AUC over the inner test folds (empty with one candidate: no search).
    search_note_ : str
        How the inner folds were made (group-disjoint unless the groups allow no such split).
    model_ : the refitted estimator
    """

    _parameter_constraints = {"classifier": [str], "params": [dict, None], "grid": [list, tuple, None],
                              "inner_splits": [Interval(Integral, 2, None, closed="left")],
                              **BinaryClassifier._parameter_constraints}

    def __init__(self, classifier="svm", params=None, grid=None, inner_splits=3, random_state=0):
        self.classifier = classifier
        self.params = params
        self.grid = grid
        self.inner_splits = inner_splits
        self.random_state = random_state

    def _build(self, candidate: Mapping[str, Any]):
        return get_classifier(self.classifier, random_state=self.random_state,
                              **{**dict(self.params or {}), **dict(candidate)})

    def _fit(self, X, y01, groups):
        candidates = [dict(c) for c in self.grid] if self.grid is not None else grid_for(self.classifier)
        base = self._build({})
        step = base.steps[-1][0]
        # every candidate is checked (as get_classifier checks; "300.0" becomes 300) before any fit starts
        grid = [{f"{step}__{k}": [self._build(cand).get_params()[f"{step}__{k}"]] for k in cand}
                for cand in candidates]
        folds, self.search_note_ = inner_folds(y01, groups, self.inner_splits, self.random_state)
        self.scores_ = []
        if len(candidates) <= 1:
            self.best_params_ = dict(candidates[0]) if candidates else {}
            model = self._build(self.best_params_)
            self.model_ = model.fit(X, y01, **group_fit_params(model, groups)) or model
            return
        search = GridSearchCV(base, grid, scoring="roc_auc", cv=folds, refit=True, error_score="raise")
        search.fit(X, y01, **group_fit_params(base, groups))  # GridSearchCV slices groups per inner fold
        self.scores_ = [(dict(c), float(s)) for c, s in zip(candidates, search.cv_results_["mean_test_score"])]
        self.best_params_ = dict(candidates[search.best_index_])
        self.model_ = search.best_estimator_

    def _proba1(self, X):
        return predict_p_all(self.model_, X)
