"""Logistic regression on standardised features: the linear baseline.

scikit-learn's ``LogisticRegression`` is the model; the builder below picks the few parameters we expose
and their defaults (its signature is the single place they are written).
"""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression

from blastscan.classifiers.base import register_classifier

__all__ = ["logistic_regression"]


# the valid values are LogisticRegression's own constraints (what its fit would check)
@register_classifier("logreg", "StandardScaler + L2 logistic regression (balanced classes)", order=10,
                     params={k: LogisticRegression._parameter_constraints[k]
                             for k in ("C", "max_iter", "class_weight")})
def logistic_regression(C=1.0, max_iter=2000, class_weight="balanced", random_state=0):
    """An unfitted ``LogisticRegression`` (L-BFGS, L2) with these settings; see its documentation."""
    return LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, random_state=random_state)
