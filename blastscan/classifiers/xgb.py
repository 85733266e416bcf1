"""Gradient-boosted trees (XGBoost ``hist``) with the class balance set at fit time.

Defaults are chosen for speed (a comparison fits hundreds of models): 200 shallow trees on 30 % of the
columns per tree and 64 histogram bins.
"""

from __future__ import annotations

import numpy as np

from blastscan.classifiers.base import BinaryClassifier, Param, register_classifier

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

    param_specs = {
        "n_estimators": Param("boosting rounds", int, low=1),
        "max_depth": Param("tree depth", int, low=1),
        "learning_rate": Param("shrinkage", float, low=0, high=1, open_low=True),
        "subsample": Param("row fraction per tree", float, low=0, high=1, open_low=True),
        "colsample_bytree": Param("column fraction per tree", float, low=0, high=1, open_low=True),
        "max_bin": Param("histogram bins per feature", int, low=2),
        "min_child_weight": Param("minimum hessian in a leaf", float, low=0),
        "reg_lambda": Param("L2 penalty on leaf weights", float, low=0),
        "n_jobs": Param("threads", int, low=1),
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
