"""The FCN's hidden layer as learned features for the grouped-calibrated RBF SVM (seed 003's pipeline).

The SVM is fitted on hidden activations of subjects the FCN never saw (``svm_share`` of the training
subjects are held out from the FCN): activations of the very rows the FCN learned from are more
confident than those of new subjects, so an SVM fitted on them was over-confident (its pooled AUC sat
below its fold AUCs).
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from blastscan.classifiers.base import (BinaryClassifier, Interval, Real, init_from_parts, inner_folds,
                                        register_classifier)
from blastscan.classifiers.fcn import FCNClassifier
from blastscan.classifiers.svm import GroupCalibratedSVC

__all__ = ["FCNSVMClassifier"]


class _Split:
    """The split's own parameter (a part for :func:`init_from_parts`)."""

    def __init__(self, svm_share=0.34):
        self.svm_share = svm_share


@register_classifier("fcn_svm", "StandardScaler + FCN; its hidden layer feeds the grouped-calibrated RBF SVM",
                     libraries=[("tensorflow", 2), ("keras", 2)], order=50, default=False)
class FCNSVMClassifier(BinaryClassifier):
    """An :class:`FCNClassifier`, then a :class:`GroupCalibratedSVC` on its standardised hidden activations.

    Parameters
    ----------
    svm_share : float
        Share of the training subjects held out from the FCN; the SVM is fitted on their activations.
    **params :
        Every parameter of :class:`FCNClassifier` (``hidden``, ``dropout``, ...) and of
        :class:`GroupCalibratedSVC` (``C``, ``gamma``, ...), under the same names and with the same
        defaults; ``random_state`` seeds both.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    fcn_ : the fitted FCNClassifier
    scaler_ : StandardScaler fitted on the hidden activations
    svm_ : the fitted GroupCalibratedSVC (its ``calibration_folds_`` are group-disjoint when groups are given)
    svm_rows_ : ndarray
        Training rows whose activations fitted the SVM (the FCN was fitted on the others).
    split_note_ : str
        How those rows were held out (group-disjoint, or per-sample when the groups allow no split).
    """

    _parameter_constraints = {"svm_share": [Interval(Real, 0, 0.8, closed="right")],
                              **FCNClassifier._parameter_constraints, **GroupCalibratedSVC._parameter_constraints}
    # the parts' parameters, flat, read from their signatures
    __init__ = init_from_parts(_Split, FCNClassifier, GroupCalibratedSVC)

    def _part(self, cls):
        part = cls()
        mine = self.get_params(deep=False)
        return part.set_params(**{k: mine[k] for k in part.get_params(deep=False)})

    def _held_out(self, y01, groups) -> tuple[np.ndarray, np.ndarray]:
        """(FCN rows, SVM rows): a group-disjoint split whose both sides hold both classes."""
        k = max(2, int(round(1 / self.svm_share)))
        folds, self.split_note_ = inner_folds(y01, groups, k, self.random_state)
        for tr, te in folds:
            if np.unique(y01[te]).size == 2:
                return tr, te
        return folds[0]

    def _fit(self, X, y01, groups):
        fcn_rows, self.svm_rows_ = self._held_out(y01, groups)
        g = None if groups is None else groups
        self.fcn_ = self._part(FCNClassifier).fit(X[fcn_rows], y01[fcn_rows],
                                                  groups=None if g is None else g[fcn_rows])
        H = self.fcn_._hidden(X[self.svm_rows_])
        self.scaler_ = StandardScaler().fit(H)
        self.svm_ = self._part(GroupCalibratedSVC).fit(self.scaler_.transform(H), y01[self.svm_rows_],
                                                       groups=None if g is None else g[self.svm_rows_])

    def _proba1(self, X):
        return self.svm_.predict_proba(self.scaler_.transform(self.fcn_._hidden(X)))[:, 1]
