"""Gradient-boosted trees (XGBoost ``hist``) with the class balance set at fit time.

Defaults are chosen for speed (a comparison fits hundreds of models): 200 shallow trees on 30 % of the
columns per tree and 64 histogram bins.

xgboost is imported on the first fit only: importing it costs a second, and it is an optional family.
"""

from __future__ import annotations

import numpy as np

from blastscan.classifiers.base import BinaryClassifier, Integral, Interval, Real, register_classifier

__all__ = ["BalancedXGBClassifier"]


@register_classifier("xgboost", "XGBoost hist trees, scale_pos_weight = n_neg/n_pos (no scaling needed)",
                     scale=False, libraries=[("xgboost", 2)], order=30, default=False)
class BalancedXGBClassifier(BinaryClassifier):
    """``xgboost.XGBClassifier`` (tree_method="hist") with ``scale_pos_weight = n_neg / n_pos`` of the
    training data.

    Parameters
    ----------
    n_estimators, max_depth, learning_rate, subsample, colsample_bytree, max_bin, min_child_weight,
    reg_lambda : XGBoost's parameters of the same names.
    n_jobs : int
        XGBoost threads (1: a comparison runs fits in parallel processes instead).
    random_state : int

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    scale_pos_weight_ : float
        ``n_neg / n_pos`` used for this fit.
    model_ : the fitted ``xgboost.XGBClassifier``
    """

    _parameter_constraints = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_depth": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, 1, closed="right")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "max_bin": [Interval(Integral, 2, None, closed="left")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "n_jobs": [Interval(Integral, 1, None, closed="left")],
        **BinaryClassifier._parameter_constraints,
    }

    def __init__(self, n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, colsample_bytree=0.3,
                 max_bin=64, min_child_weight=1.0, reg_lambda=1.0, n_jobs=1, random_state=0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit(self, X, y01, groups):
        from xgboost import XGBClassifier

        n_pos = int(y01.sum())
        self.scale_pos_weight_ = (len(y01) - n_pos) / n_pos
        params = self.get_params()
        params.pop("random_state")  # passed on its own below
        self.model_ = XGBClassifier(tree_method="hist", objective="binary:logistic", eval_metric="logloss",
                                    scale_pos_weight=self.scale_pos_weight_, random_state=self.random_state,
                                    **params).fit(X, y01)

    def _proba1(self, X):
        return self.model_.predict_proba(X)[:, 1]

    @property
    def feature_importances_(self) -> np.ndarray:
        """XGBoost's gain-based importances, one per input column."""
        return self.model_.feature_importances_
