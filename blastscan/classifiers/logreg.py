"""Logistic regression on standardised features: the linear baseline.

scikit-learn's ``LogisticRegression`` is the model; the builder below picks the few parameters we expose
and their defaults (its signature is the single place they are written).
"""

from __future__ import annotations

from blastscan.classifiers.base import Param, register_classifier

__all__ = ["logistic_regression"]


@register_classifier(
    "logreg", "StandardScaler + L2 logistic regression (balanced classes)", order=10,
    params={
        "C": Param("inverse L2 regularisation strength", float, low=0, open_low=True),
        "max_iter": Param("L-BFGS iterations", int, low=1),
        "class_weight": Param("class weights", choices=("balanced", None)),
    })
def logistic_regression(C=1.0, max_iter=2000, class_weight="balanced", random_state=0):
    """An unfitted ``LogisticRegression`` (L-BFGS, L2) with these settings; see its documentation."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, random_state=random_state)
