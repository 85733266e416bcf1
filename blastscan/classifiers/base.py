"""What every classifier family shares: how a family declares itself (signature + scikit-learn parameter
constraints), the one-line check of a hyper-parameter value, binary-estimator plumbing and the group-disjoint
inner splits used by models that split their training data (SVM calibration, FCN early stopping).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets, type_of_target
# scikit-learn's parameter constraints (what every sklearn estimator declares in ``_parameter_constraints``
# and validates in ``fit``) live in a private module, stable since 1.2; this is the one import of it:
# families take Interval, StrOptions and choices() from here.
from sklearn.utils._param_validation import Interval, StrOptions, make_constraint
from sklearn.utils.validation import check_is_fitted, validate_data

from blastscan.errors import BlastscanError
from blastscan.registry import Registry

__all__ = ["Interval", "StrOptions", "Integral", "Real", "choices", "describe_constraints", "check_param",
           "ClassifierSpec", "BASE_LIBRARIES", "CLASSIFIERS", "register_classifier", "signature_defaults",
           "init_from_parts", "BinaryClassifier", "scaled", "inner_folds", "balanced_weights"]


# ------------------------------------------------------------------------------------------------
# parameters: scikit-learn constraints, one list per hyper-parameter
def choices(*options: str) -> StrOptions:
    """``StrOptions`` of ``options`` that remembers the order they were written in (for messages)."""
    constraint = StrOptions(set(options))
    constraint.order = options
    return constraint


def _describe(constraint) -> str:
    if isinstance(constraint, StrOptions):
        return " or ".join(repr(o) for o in getattr(constraint, "order", sorted(constraint.options)))
    if isinstance(constraint, Interval):
        open_left = constraint.closed in ("right", "neither")
        open_right = constraint.closed in ("left", "neither")
        lo = "" if constraint.left is None else f"{constraint.left} {'<' if open_left else '<='} "
        hi = "" if constraint.right is None else f" {'<' if open_right else '<='} {constraint.right}"
        noun = "an integer" if constraint.type is Integral else "a number"
        return noun + (f" with {lo}x{hi}" if lo or hi else "")
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"a {constraint.__name__}"
    return str(make_constraint(constraint))


def describe_constraints(constraints: Sequence[Any]) -> str:
    """The values a list of constraints accepts, in words: ``'scale' or 'auto' or a number with 0 < x``."""
    return " or ".join(_describe(c) for c in constraints)


def check_param(name: str, value: Any, constraints: Sequence[Any]) -> Any:
    """``value`` when one of ``constraints`` accepts it (an integer-valued float becomes an int where only
    integers are valid: ``"300.0"`` from a command line is 300 trees); else ``ValueError`` naming the
    parameter and what is valid. Unlike scikit-learn, ``True`` / ``False`` are never numbers."""
    integers_only = any(isinstance(c, Interval) and c.type is Integral for c in constraints) and not any(
        isinstance(c, Interval) and c.type is not Integral for c in constraints)
    if integers_only and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, (bool, np.bool_)) and bool not in constraints and "boolean" not in constraints):
        if any(make_constraint(c).is_satisfied_by(value) for c in constraints):
            return value
    raise ValueError(f"parameter {name}={value!r} is invalid: must be {describe_constraints(constraints)}")


# ------------------------------------------------------------------------------------------------
# registration
BASE_LIBRARIES: tuple[tuple[str, int], ...] = (("scikit-learn", 2), ("numpy", 1))
"""Libraries every classifier's bundle checks: (name, how many leading version parts must agree)."""


@dataclass(frozen=True)
class ClassifierSpec:
    """A classifier family, as :func:`register_classifier` declared it.

    Attributes
    ----------
    name, summary : str
        Registry name and the one-line description :func:`blastscan.classifiers.describe_classifier` shows.
    factory : callable
        ``factory(random_state=..., **params)`` returns the unfitted final estimator.
    params : dict of str to list
        scikit-learn constraints of each hyper-parameter, in the order of ``factory``'s signature.
    defaults : dict
        The hyper-parameters' defaults, read from ``factory``'s signature (``random_state`` excluded).
    scale : bool
        Whether a ``StandardScaler`` step precedes the model.
    libraries : tuple of (str, int)
        Libraries beyond :data:`BASE_LIBRARIES` whose versions the bundle checks.
    default : bool
        Whether ``compare`` runs it when no classifiers are named.
    order : int
        Position in default lists (lower first; ties by name).
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    params: dict[str, list]
    defaults: dict[str, Any]
    scale: bool = True
    libraries: tuple[tuple[str, int], ...] = ()
    default: bool = True
    order: int = 100

    def build(self, random_state: int = 0, **params: Any):
        """A fresh, unfitted Pipeline (``scale`` then ``model``); ``params`` override the defaults."""
        model = self.factory(random_state=random_state, **{**self.defaults, **params})
        return scaled(model) if self.scale else Pipeline([("model", model)])


#: Every classifier family by name; the modules of :mod:`blastscan.classifiers` are imported on the first lookup.
CLASSIFIERS: Registry[ClassifierSpec] = Registry("classifier", "blastscan.classifiers")


def signature_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The parameters of ``factory`` (a class: its ``__init__``) with their defaults, in signature order,
    without ``random_state``: what scikit-learn's ``get_params`` would report for a default instance.

    Raises ``TypeError`` when a parameter is ``*args`` / ``**kwargs``, has no default, or ``random_state`` is
    missing (every family is seeded).
    """
    signature = inspect.signature(factory)
    names = list(signature.parameters)
    if "random_state" not in names:
        raise TypeError(f"{factory.__qualname__} takes no random_state parameter")
    out = {}
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(f"{factory.__qualname__}: parameter {p.name} needs a default (and no *args/**kwargs)")
        if p.name != "random_state":
            out[p.name] = p.default
    return out


def register_classifier(name: str, summary: str, *, params: dict[str, list] | None = None, scale: bool = True,
                        libraries: Sequence[tuple[str, int]] = (), default: bool = True, order: int = 100):
    """Decorator: declare a class or builder function as the classifier family ``name`` in :data:`CLASSIFIERS`.

    The decorated object is returned unchanged, so a new family is one new module of
    :mod:`blastscan.classifiers`. Hyper-parameters and defaults come from the signature (``random_state`` is
    the seed); ``params`` (a class's ``_parameter_constraints`` when omitted, as scikit-learn declares
    them) only says which values each accepts.

    Parameters
    ----------
    name, summary : str
    params : dict of str to list of constraints, optional
        scikit-learn constraints (``Interval``, ``StrOptions``, ``None``, a type ...): exactly one entry per
        parameter of the signature other than ``random_state``.
    scale : bool
        Put a ``StandardScaler`` before the model.
    libraries : sequence of (str, int)
        Libraries beyond scikit-learn and numpy whose versions the bundle checks, with the number of
        leading version parts that must agree (``("xgboost", 2)``: major and minor).
    default : bool
        Run it in ``compare`` when no classifiers are named.
    order : int
        Position in default lists (lower first).

    Raises
    ------
    TypeError
        The signature and ``params`` do not name the same parameters (caught when the module is imported).
    BlastscanError
        Another module already declared a family ``name``.
    """

    def deco(factory):
        declared = getattr(factory, "_parameter_constraints", {}) if params is None else params
        declared = {k: list(v) for k, v in declared.items() if k != "random_state"}
        defaults = signature_defaults(factory)
        if set(declared) != set(defaults):
            raise TypeError(f"classifier '{name}': the signature's parameters {list(defaults)} and the declared "
                            f"constraints {list(declared)} differ")
        spec = ClassifierSpec(name, summary, factory, {k: declared[k] for k in defaults}, defaults, scale,
                              tuple(map(tuple, libraries)), default, order)
        try:
            CLASSIFIERS.register(name, spec)
        except ValueError:
            first = dict(CLASSIFIERS.items())[name].factory.__module__
            raise BlastscanError(f"classifier '{name}'", f"declared twice ({first} and {factory.__module__})") from None
        return factory

    return deco


def init_from_parts(*parts: type) -> Callable[..., None]:
    """An ``__init__`` taking every parameter of ``parts``' ``__init__`` (first one wins for a shared name,
    such as ``random_state``) and storing each unchanged, as scikit-learn requires.

    For an estimator made of others (``fcn_svm``): its parameters are its parts', never restated. The
    returned function carries the merged ``__signature__``, which is what ``get_params``, ``clone`` and
    ``repr`` read.
    """
    merged = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for part in parts:
        for p in inspect.signature(part).parameters.values():
            if all(p.name != q.name for q in merged):
                merged.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    signature = inspect.Signature(merged)

    def __init__(self, **params):
        bound = signature.bind(self, **params)  # an unknown name is a TypeError, as for a written-out __init__
        bound.apply_defaults()
        for key, value in list(bound.arguments.items())[1:]:
            setattr(self, key, value)

    __init__.__signature__ = signature
    __init__.__doc__ = f"Parameters: those of {', '.join(p.__name__ for p in parts)}."
    return __init__


def scaled(model):
    """``StandardScaler`` + ``model`` as a Pipeline whose last step is named ``model``."""
    return Pipeline([("scale", StandardScaler()), ("model", model)])


# ------------------------------------------------------------------------------------------------
# binary estimators
class BinaryClassifier(ClassifierMixin, BaseEstimator):
    """Base of our own two-class estimators.

    Subclasses take their hyper-parameters in ``__init__`` (which stores them unchanged, as scikit-learn
    requires; the defaults live there only), give each one's valid values in ``_parameter_constraints`` (as
    scikit-learn's estimators do; ``fit`` validates them, :func:`blastscan.classifiers.get_classifier` already
    on construction), and implement ``_fit(X, y01, groups)`` with labels encoded 0/1 in the order of ``classes_``, and
    ``_proba1(X)``: the probability of ``classes_[1]`` (P(ALL) for labels 0 = HEM, 1 = ALL).
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {"random_state": ["random_state"]}

    def fit(self, X, y, groups=None):
        """Fit on ``X`` (n, d) and two-class ``y``; ``groups`` (one id per row, e.g. the subject) keeps
        every internal split group-disjoint. Returns ``self``."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        if type_of_target(y) != "binary":
            raise ValueError(f"Only binary classification is supported; y is {type_of_target(y)}")
        self.classes_, y01 = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"{type(self).__name__} needs 2 classes; y holds 1 class only")
        if groups is not None and len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries for {len(y)} samples")
        self._fit(X, y01, None if groups is None else np.asarray(groups).astype(str))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, 2), columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        p1 = np.clip(np.asarray(self._proba1(X), dtype=float), 0.0, 1.0)
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X) -> np.ndarray:
        """The class with probability >= 0.5."""
        check_is_fitted(self)
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _fit(self, X, y01, groups):  # pragma: no cover - overridden
        raise NotImplementedError

    def _proba1(self, X):  # pragma: no cover - overridden
        raise NotImplementedError


def balanced_weights(y01: np.ndarray) -> np.ndarray:
    """Per-sample weights ``n / (n_classes * n_c)`` (scikit-learn's "balanced")."""
    counts = np.bincount(y01, minlength=2).astype(float)
    present = counts > 0
    w = np.zeros(2)
    w[present] = len(y01) / (present.sum() * counts[present])
    return w[y01]


# ------------------------------------------------------------------------------------------------
# inner splits
def inner_folds(y01: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> tuple[list, str]:
    """Folds for a model's own internal split, group-disjoint whenever the groups allow it.

    ``StratifiedGroupKFold`` with ``n_splits`` (reduced down to 2 while a training part would hold one
    class only). When no groups are given or no group-disjoint split keeps both classes in every training
    part, falls back to a per-sample ``StratifiedKFold`` and says so in the returned note.

    Returns
    -------
    folds : list of (train_idx, test_idx)
    note : str
        How the folds were made; starts with ``"per-sample"`` for the (leaky) fallback.
    """
    counts = np.bincount(y01, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"an inner split needs at least 2 samples of each class (got {counts.min()})")
    dummy = np.zeros(len(y01))
    why = "no groups given"
    if groups is not None:
        for k in range(min(int(n_splits), len(np.unique(groups))), 1, -1):
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = [(tr, te) for tr, te in cv.split(dummy, y01, groups) if len(te)]
            if len(folds) >= 2 and all(np.unique(y01[tr]).size == 2 for tr, _ in folds):
                return folds, f"group-disjoint StratifiedGroupKFold({len(folds)})"
        why = "the groups allow no split keeping both classes in every training part"
    k = int(min(n_splits, counts.min()))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    note = f"per-sample StratifiedKFold({k}) ({why}): one subject's cells may sit on both sides"
    return list(cv.split(dummy, y01)), note
