"""Soft voting across feature sets: each member is a classifier on its own columns of a concatenated
feature matrix, and P(ALL) is the mean of the members' P(ALL).

Concatenating a 12-d size vector with a 2048-d embedding drowns the small set; voting keeps each model
on the features it was made for. ``compare`` builds the members' column ranges from the feature sets
(``vote(inception_v3/svm_pca+size/logreg)``); ``export`` and ``score`` use it like any classifier.
"""

from __future__ import annotations

import numpy as np

from blastscan.classifiers import fit_classifier, get_classifier, predict_p_all
from blastscan.classifiers.base import BinaryClassifier, register_classifier

__all__ = ["SoftVote"]


@register_classifier("vote", "mean P(ALL) of member classifiers, each on its own feature columns", scale=False,
                     default=False, order=90)
class SoftVote(BinaryClassifier):
    """Mean of member classifiers' P(ALL), each fitted on its own columns.

    Parameters
    ----------
    members : list of dict
        ``{"classifier": name, "params": {...}, "columns": [[start, stop], ...]}`` per member: a classifier
        of the registry with its parameters, and the column ranges of ``X`` it reads.
    random_state : int
        Seeds every member (each gets the same seed, as when fitted on its own).

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    members_ : list of fitted estimators, in ``members`` order
    """

    _parameter_constraints = {"members": [list, tuple], **BinaryClassifier._parameter_constraints}

    def __init__(self, members=(), random_state=0):
        self.members = members
        self.random_state = random_state

    def _columns(self, member: dict, n_features: int) -> np.ndarray:
        ranges = member.get("columns") or []
        cols = np.concatenate([np.arange(int(a), int(b)) for a, b in ranges]) if ranges else np.arange(0)
        if not len(cols) or cols.max() >= n_features or cols.min() < 0:
            raise ValueError(f"member {member.get('classifier')!r}: columns {ranges} do not fit {n_features} features")
        return cols

    def _fit(self, X, y01, groups):
        if not self.members:
            raise ValueError("SoftVote needs at least one member")
        self.members_, self.columns_ = [], []
        for m in self.members:
            cols = self._columns(m, X.shape[1])
            est = get_classifier(m["classifier"], random_state=self.random_state, **dict(m.get("params") or {}))
            self.members_.append(fit_classifier(est, X[:, cols], y01, groups=groups))
            self.columns_.append(cols)

    def _proba1(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.mean([predict_p_all(est, X[:, cols]) for est, cols in zip(self.members_, self.columns_)], axis=0)
