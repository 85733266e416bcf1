"""The FCN's hidden layer as learned features for the grouped-calibrated RBF SVM (seed 003's pipeline).

Caveat: the SVM sees hidden activations of the very rows the FCN was trained on, so its training (and
calibration) scores are more confident than on unseen subjects; the outer subject-disjoint evaluation
measures what this costs.
"""

from __future__ import annotations

from blastscan.classifiers.base import BinaryClassifier, init_from_parts, register_classifier
from blastscan.classifiers.fcn import FCNClassifier
from blastscan.classifiers.svm import GroupCalibratedSVC

__all__ = ["FCNSVMClassifier"]


@register_classifier("fcn_svm", "StandardScaler + FCN; its hidden layer feeds the grouped-calibrated RBF SVM",
                     libraries=[("tensorflow", 2), ("keras", 2)], order=50, default=False)
class FCNSVMClassifier(BinaryClassifier):
    """An :class:`FCNClassifier`, then a :class:`GroupCalibratedSVC` on its standardised hidden activations.

    Parameters
    ----------
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
    """

    param_specs = {**FCNClassifier.param_specs, **GroupCalibratedSVC.param_specs}
    # the parts' parameters, flat (bundles written before store them so), read from their signatures
    __init__ = init_from_parts(FCNClassifier, GroupCalibratedSVC)

    def _part(self, cls):
        part = cls()
        mine = self.get_params(deep=False)
        return part.set_params(**{k: mine[k] for k in part.get_params(deep=False)})

    def _fit(self, X, y01, groups):
        from sklearn.preprocessing import StandardScaler

        self.fcn_ = self._part(FCNClassifier).fit(X, y01, groups=groups)
        H = self.fcn_._hidden(X)
        self.scaler_ = StandardScaler().fit(H)
        self.svm_ = self._part(GroupCalibratedSVC).fit(self.scaler_.transform(H), y01, groups=groups)

    def _proba1(self, X):
        return self.svm_.predict_proba(self.scaler_.transform(self.fcn_._hidden(X)))[:, 1]
