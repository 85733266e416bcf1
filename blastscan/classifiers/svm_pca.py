"""PCA, then the grouped-calibrated RBF SVM: for wide embeddings (2048-d InceptionV3), where an RBF kernel on
every standardised dimension mostly measures noise. The projection is fitted on the training rows only."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from blastscan.classifiers.base import BinaryClassifier, Integral, Interval, init_from_parts, register_classifier
from blastscan.classifiers.svm import GroupCalibratedSVC

__all__ = ["PCASVC"]


class _Projection:
    """The PCA part's own parameter (a part for :func:`init_from_parts`)."""

    def __init__(self, n_components=128):
        self.n_components = n_components


@register_classifier("svm_pca", "StandardScaler + PCA + grouped-calibrated RBF SVM (for wide embeddings)",
                     order=25)
class PCASVC(BinaryClassifier):
    """PCA to ``n_components`` (fewer when the training rows or columns are fewer), then
    :class:`~blastscan.classifiers.svm.GroupCalibratedSVC` on the projection.

    Parameters
    ----------
    n_components : int
        Principal components kept.
    C, gamma, class_weight, calibration, inner_splits, random_state :
        Those of :class:`~blastscan.classifiers.svm.GroupCalibratedSVC`.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    pca_ : the fitted ``PCA``
    svm_ : the fitted GroupCalibratedSVC
    """

    _parameter_constraints = {"n_components": [Interval(Integral, 1, None, closed="left")],
                              **GroupCalibratedSVC._parameter_constraints}
    __init__ = init_from_parts(_Projection, GroupCalibratedSVC)

    def _fit(self, X, y01, groups):
        k = int(min(self.n_components, X.shape[0] - 1, X.shape[1]))
        self.pca_ = PCA(n_components=max(k, 1), random_state=self.random_state).fit(X)
        svm = GroupCalibratedSVC()
        mine = self.get_params(deep=False)
        svm.set_params(**{p: mine[p] for p in svm.get_params(deep=False)})
        self.svm_ = svm.fit(self.pca_.transform(X), y01, groups=groups)

    def _proba1(self, X):
        return self.svm_.predict_proba(self.pca_.transform(np.asarray(X, dtype=np.float64)))[:, 1]
