"""Classifier families by name: each builds a fresh scikit-learn estimator (a ``Pipeline`` whose last step
is named ``model``) whose ``predict_proba(X)[:, 1]`` is P(ALL) for labels 1 = ALL, 0 = HEM.

Families are discovered: every module of this package that declares one with
:func:`blastscan.classifiers.base.register_classifier` is found, so a new family is one new module.
Fit through :func:`fit_classifier`: it hands the subject groups to models that split their training data
(SVM calibration, FCN early stopping), so even those inner splits are subject-disjoint.

Importing this package is cheap: families load on first use, and TensorFlow only when an FCN is fitted.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import pkgutil
from typing import Any

from blastscan.errors import BlastscanError

__all__ = ["available_classifiers", "default_classifiers", "get_classifier", "fit_classifier",
           "describe_classifier", "classifier_defaults", "classifier_libraries", "classifier_inputs"]


def _registry() -> dict:
    """Name -> ClassifierSpec of every family declared in a module of this package (``_private`` modules
    skipped). Read afresh on each call: a few directory entries, and modules already imported are cached by
    Python, so a module added to ``__path__`` (a plug-in folder, a test) is seen at once."""
    from blastscan.classifiers.base import specs_in

    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for spec in specs_in(module):
            if spec.name in found:
                first = found[spec.name].factory.__module__
                raise BlastscanError(f"classifier '{spec.name}'", f"declared twice ({first} and {module.__name__})")
            found[spec.name] = spec
    return found


def _spec(name: str):
    registry = _registry()
    if name not in registry:
        raise BlastscanError(f"classifier '{name}'", f"unknown; choose from: {', '.join(sorted(registry))}")
    return registry[name]


def available_classifiers() -> list[str]:
    """Names of all registered classifier families, sorted."""
    return sorted(_registry())


def default_classifiers() -> list[str]:
    """The families ``compare`` runs when none are named: those declared ``default=True``, in their
    declared ``order`` (ties by name)."""
    specs = [s for s in _registry().values() if s.default]
    return [s.name for s in sorted(specs, key=lambda s: (s.order, s.name))]


def classifier_defaults(name: str) -> dict[str, Any]:
    """The default hyper-parameters of ``name`` (those :func:`get_classifier` accepts), read from the
    signature of its estimator (or builder), in that order."""
    return dict(_spec(name).defaults)


def classifier_libraries(name: str | None = None) -> list[tuple[str, int]]:
    """Libraries whose versions a bundle of classifier ``name`` must match to predict the same, each with
    how many leading version parts must agree: scikit-learn and numpy, then the family's own.

    ``name=None`` gives the union over every family (for a bundle whose classifier is not known here).
    Raises ``BlastscanError`` for an unknown name.
    """
    from blastscan.classifiers.base import BASE_LIBRARIES

    specs = list(_registry().values()) if name is None else [_spec(name)]
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
    spec = _spec(name)
    what = f"classifier '{name}'"
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise BlastscanError(what, f"unknown parameter '{unknown[0]}'; valid: {', '.join(spec.params)}")
    for key, value in params.items():
        try:
            spec.params[key].check(key, value)
        except ValueError as exc:
            raise BlastscanError(what, str(exc)) from None
        if spec.params[key].kind is int and not isinstance(value, (str, type(None))):
            params[key] = int(value)  # "300.0" from a command line is 300 trees
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise BlastscanError(what, f"random_state must be an integer (got {random_state!r})")
    return spec.build(random_state=int(random_state), **params)


def _final_step(est):
    steps = getattr(est, "steps", None)
    return (steps[-1][0], steps[-1][1]) if steps else (None, est)


def fit_classifier(est, X, y, groups=None):
    """Fit ``est`` on ``X, y`` and return it; ``groups`` (one subject / group id per row) reaches the final
    estimator when its ``fit`` takes ``groups``, so its internal splits never divide a group. Other
    estimators get plain ``fit(X, y)``."""
    step, final = _final_step(est)
    if groups is None or "groups" not in inspect.signature(final.fit).parameters:
        return est.fit(X, y) or est
    key = "groups" if step is None else f"{step}__groups"
    return est.fit(X, y, **{key: groups}) or est


def describe_classifier(name: str) -> str:
    """One line: ``name: what it is (defaults: k=v, ...)``."""
    spec = _spec(name)
    defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
    return f"{name}: {spec.summary} (defaults: {defaults})"


def classifier_inputs(name, feature_set: str) -> str | None:
    """The feature set whose table the fits of classifier ``name`` on ``feature_set`` read.

    ``feature_set`` itself for every family except those declaring ``input_features`` (a mapping): ``finetune``
    on ``inception_v3`` reads the cached ``inception_v3_mixed8_act`` activations. ``None`` when such a family
    cannot run on ``feature_set``. A classifier given as an estimator, or by a name the caller's own factories
    resolve (not registered here), reads ``feature_set``.
    """
    if not isinstance(name, str) or name not in _registry():  # an estimator, or a family a caller supplies
        return feature_set
    mapping = getattr(_spec(name).factory, "input_features", None)
    return feature_set if mapping is None else mapping.get(feature_set)
