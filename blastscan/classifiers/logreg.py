"""Logistic regression on standardised features: the linear baseline."""

from __future__ import annotations

from blastscan.classifiers.base import Param, register_classifier, scaled

__all__ = ["PARAMS"]

PARAMS = {
    "C": Param(1.0, "inverse L2 regularisation strength", float, low=0, open_low=True),
    "max_iter": Param(2000, "L-BFGS iterations", int, low=1),
    "class_weight": Param("balanced", "class weights", choices=("balanced", None)),
}


@register_classifier("logreg", "StandardScaler + L2 logistic regression (balanced classes)", PARAMS)
def build(random_state=0, **params):
    from sklearn.linear_model import LogisticRegression

    return scaled(LogisticRegression(random_state=random_state, **params))
