"""The FCN's hidden layer as learned features for the grouped-calibrated RBF SVM (seed 003's pipeline).

Caveat: the SVM sees hidden activations of the very rows the FCN was trained on, so its training (and
calibration) scores are more confident than on unseen subjects; the outer subject-disjoint evaluation
measures what this costs.
"""

from __future__ import annotations

from blastscan.classifiers.base import BinaryClassifier, register_classifier, scaled
from blastscan.classifiers.fcn import FCNClassifier
from blastscan.classifiers.svm import GroupCalibratedSVC

__all__ = ["FCNSVMClassifier"]


class FCNSVMClassifier(BinaryClassifier):
    """An :class:`FCNClassifier`, then a :class:`GroupCalibratedSVC` on its standardised hidden activations.

    Parameters
    ----------
    hidden, dropout, epochs, patience, batch_size, lr, val_fraction :
        The FCN's (see :class:`FCNClassifier`).
    C, gamma, class_weight, calibration, inner_splits :
        The SVM's (see :class:`GroupCalibratedSVC`).
    random_state : int
        Seeds both.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    fcn_ : the fitted FCNClassifier
    scaler_ : StandardScaler fitted on the hidden activations
    svm_ : the fitted GroupCalibratedSVC (its ``calibration_folds_`` are group-disjoint when groups are given)
    """

    param_specs = {**FCNClassifier.param_specs, **GroupCalibratedSVC.param_specs}

    def __init__(self, hidden=256, dropout=0.3, epochs=60, patience=8, batch_size=64, lr=1e-3, val_fraction=0.2,
                 C=1.0, gamma="scale", class_weight="balanced", calibration="sigmoid", inner_splits=3,
                 random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.calibration = calibration
        self.inner_splits = inner_splits
        self.random_state = random_state

    def _part(self, cls):
        return cls(random_state=self.random_state, **{k: getattr(self, k) for k in cls.param_specs})

    def _fit(self, X, y01, groups):
        from sklearn.preprocessing import StandardScaler

        self.fcn_ = self._part(FCNClassifier).fit(X, y01, groups=groups)
        H = self.fcn_._hidden(X)
        self.scaler_ = StandardScaler().fit(H)
        self.svm_ = self._part(GroupCalibratedSVC).fit(self.scaler_.transform(H), y01, groups=groups)

    def _proba1(self, X):
        return self.svm_.predict_proba(self.scaler_.transform(self.fcn_._hidden(X)))[:, 1]


register_classifier("fcn_svm", "StandardScaler + FCN; its hidden layer feeds the grouped-calibrated RBF SVM",
                    FCNSVMClassifier.param_specs)(
    lambda random_state=0, **params: scaled(FCNSVMClassifier(random_state=random_state, **params)))
