"""Classifier families by name: each builds a fresh scikit-learn estimator (a ``Pipeline`` whose last step
is named ``model``) whose ``predict_proba(X)[:, 1]`` is P(ALL) for labels 1 = ALL, 0 = HEM.

Families live in :data:`blastscan.classifiers.base.CLASSIFIERS`: every module of this package that declares
one with :func:`blastscan.classifiers.base.register_classifier` is imported on the first lookup, so a new
family is one new module. Fit through :func:`fit_classifier`: it hands the subject groups to models that
split their training data (SVM calibration, FCN early stopping), so even those inner splits are
subject-disjoint; read P(ALL) through :func:`predict_p_all`.

Importing this package is cheap: families load on first lookup, xgboost on its first fit and TensorFlow
only when an FCN is fitted.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np

from blastscan.classifiers.base import BASE_LIBRARIES, CLASSIFIERS, check_param
from blastscan.errors import BlastscanError

__all__ = ["available_classifiers", "default_classifiers", "get_classifier", "fit_classifier", "group_fit_params",
           "predict_p_all", "describe_classifier", "classifier_defaults", "classifier_libraries", "classifier_inputs"]


def available_classifiers() -> list[str]:
    """Names of all registered classifier families, sorted."""
    return CLASSIFIERS.names()


def default_classifiers() -> list[str]:
    """The families ``compare`` runs when none are named: those declared ``default=True``, in their
    declared ``order`` (ties by name)."""
    specs = [spec for _, spec in CLASSIFIERS.items() if spec.default]
    return [s.name for s in sorted(specs, key=lambda s: (s.order, s.name))]


def classifier_defaults(name: str) -> dict[str, Any]:
    """The default hyper-parameters of ``name`` (those :func:`get_classifier` accepts), read from the
    signature of its estimator (or builder), in that order."""
    return dict(CLASSIFIERS.get(name).defaults)


def classifier_libraries(name: str | None = None) -> list[tuple[str, int]]:
    """Libraries whose versions a bundle of classifier ``name`` must match to predict the same, each with
    how many leading version parts must agree: scikit-learn and numpy, then the family's own.

    ``name=None`` gives the union over every family (for a bundle whose classifier is not known here).
    Raises ``BlastscanError`` for an unknown name.
    """
    specs = [spec for _, spec in CLASSIFIERS.items()] if name is None else [CLASSIFIERS.get(name)]
    out = list(BASE_LIBRARIES)
    for spec in sorted(specs, key=lambda s: (s.order, s.name)):
        out += [lib for lib in spec.libraries if lib not in out]
    return out


def get_classifier(name: str, random_state: int = 0, **params: Any):
    """A fresh, unfitted estimator of family ``name`` with ``params`` overriding its defaults.

    Parameters
    ----------
    name : str
        One of :func:`available_classifiers`.
    random_state : int
        Seed of every random step of the model.
    **params
        Hyper-parameters (see :func:`describe_classifier`), as Python values.

    Raises
    ------
    BlastscanError
        Unknown name, unknown parameter, or invalid value (the message lists what is valid).
    """
    spec = CLASSIFIERS.get(name)
    what = f"classifier '{name}'"
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise BlastscanError(what, f"unknown parameter '{unknown[0]}'; valid: {', '.join(spec.params)}")
    for key, value in params.items():
        try:
            params[key] = check_param(key, value, spec.params[key])
        except ValueError as exc:
            raise BlastscanError(what, str(exc)) from None
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise BlastscanError(what, f"random_state must be an integer (got {random_state!r})")
    return spec.build(random_state=int(random_state), **params)


def _final_step(est):
    steps = getattr(est, "steps", None)
    return (steps[-1][0], steps[-1][1]) if steps else (None, est)


def group_fit_params(est, groups) -> dict[str, Any]:
    """The ``fit`` keyword that hands ``groups`` to ``est``'s final estimator (``{"model__groups": groups}``
    for a Pipeline), or ``{}`` when there are no groups or its ``fit`` takes none. ``GridSearchCV`` slices
    such a parameter per fold."""
    step, final = _final_step(est)
    if groups is None or "groups" not in inspect.signature(final.fit).parameters:
        return {}
    return {"groups" if step is None else f"{step}__groups": groups}


def fit_classifier(est, X, y, groups=None):
    """Fit ``est`` on ``X, y`` and return it; ``groups`` (one subject / group id per row) reaches the final
    estimator when its ``fit`` takes ``groups``, so its internal splits never divide a group. Other
    estimators get plain ``fit(X, y)``."""
    return est.fit(X, y, **group_fit_params(est, groups)) or est


def predict_p_all(est, X) -> np.ndarray:
    """P(ALL) of the fitted ``est`` for rows ``X``, as float64: the column of class 1, whatever the class
    order. Every P(ALL) (compare's out-of-fold predictions, tuning, voting, a bundle's scores) comes from here."""
    # float64 in and out: float32 BLAS results can differ in the last bit with batch size and alignment
    col = list(getattr(est, "classes_", [0, 1])).index(1)
    return np.asarray(est.predict_proba(np.asarray(X, dtype=np.float64)))[:, col].astype(np.float64)


def describe_classifier(name: str) -> str:
    """One line: ``name: what it is (defaults: k=v, ...)``."""
    spec = CLASSIFIERS.get(name)
    defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
    return f"{name}: {spec.summary} (defaults: {defaults})"


def classifier_inputs(name, feature_set: str) -> str | None:
    """The feature set whose table the fits of classifier ``name`` on ``feature_set`` read.

    ``feature_set`` itself for every family except those declaring ``input_features`` (a mapping): ``finetune``
    on ``inception_v3`` reads the cached ``inception_v3_mixed8_act`` activations. ``None`` when such a family
    cannot run on ``feature_set``. A classifier given as an estimator, or by a name the caller's own factories
    resolve (not registered here), reads ``feature_set``.
    """
    if not isinstance(name, str) or name not in CLASSIFIERS:  # an estimator, or a family a caller supplies
        return feature_set
    mapping = getattr(CLASSIFIERS.get(name).factory, "input_features", None)
    return feature_set if mapping is None else mapping.get(feature_set)
