"""What every classifier family shares: how a family declares itself (signature + value ranges), parameter
checks, binary-estimator plumbing and the group-disjoint inner splits used by models that split their
training data (SVM calibration, FCN early stopping).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["Param", "ClassifierSpec", "BASE_LIBRARIES", "register_classifier", "signature_defaults", "specs_in",
           "init_from_parts", "BinaryClassifier", "scaled", "inner_folds", "balanced_weights"]


# ------------------------------------------------------------------------------------------------
# parameters
@dataclass(frozen=True)
class Param:
    """Which values one hyper-parameter accepts, and what it means (its default lives in the signature).

    A value is valid when it is one of ``choices``, or a number of ``kind`` (int or float; bool never
    counts as a number) inside ``[low, high]`` (``low`` excluded when ``open_low``), or, for ``kind``
    ``list``, a list (its items are checked by the estimator's ``fit``).
    """

    help: str
    kind: type | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple = ()

    def rule(self) -> str:
        """The valid values, in words (for error messages)."""
        parts = [repr(c) for c in self.choices]
        if self.kind is not None:
            lo = "" if self.low is None else f"{self.low} {'<' if self.open_low else '<='} "
            hi = "" if self.high is None else f" <= {self.high}"
            noun = "an integer" if self.kind is int else ("a list" if self.kind is list else "a number")
            parts.append(noun + (f" with {lo}x{hi}" if lo or hi else ""))
        return " or ".join(parts)

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` when ``value`` is not valid for parameter ``name``."""
        if any(value is c or (isinstance(value, str) and value == c) for c in self.choices):
            return
        if self.kind is list:
            if isinstance(value, (list, tuple)):
                return
            raise ValueError(f"parameter {name}={value!r} is invalid: must be a list")
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if self.kind is int:
            number = number and float(value).is_integer()
        ok = number and self.kind is not None and np.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.open_low else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            raise ValueError(f"parameter {name}={value!r} is invalid: must be {self.rule()}")


# ------------------------------------------------------------------------------------------------
# registration
BASE_LIBRARIES: tuple[tuple[str, int], ...] = (("scikit-learn", 2), ("numpy", 1))
"""Libraries every classifier's bundle checks: (name, how many leading version parts must agree)."""

_SPEC_ATTR = "_blastscan_classifier"  # where register_classifier leaves its spec for discovery


@dataclass(frozen=True)
class ClassifierSpec:
    """A classifier family, as :func:`register_classifier` declared it.

    Attributes
    ----------
    name, summary : str
        Registry name and the one-line description :func:`blastscan.classifiers.describe_classifier` shows.
    factory : callable
        ``factory(random_state=..., **params)`` returns the unfitted final estimator.
    params : dict of str to Param
        Valid values of each hyper-parameter, in the order of ``factory``'s signature.
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
    params: dict[str, Param]
    defaults: dict[str, Any]
    scale: bool = True
    libraries: tuple[tuple[str, int], ...] = ()
    default: bool = True
    order: int = 100

    def build(self, random_state: int = 0, **params: Any):
        """A fresh, unfitted Pipeline (``scale`` then ``model``); ``params`` override the defaults."""
        from sklearn.pipeline import Pipeline

        model = self.factory(random_state=random_state, **{**self.defaults, **params})
        return scaled(model) if self.scale else Pipeline([("model", model)])


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


def register_classifier(name: str, summary: str, *, params: dict[str, Param] | None = None, scale: bool = True,
                        libraries: Sequence[tuple[str, int]] = (), default: bool = True, order: int = 100):
    """Decorator: declare a class or builder function as the classifier family ``name``.

    The decorated object is returned unchanged; it carries its :class:`ClassifierSpec`, which
    :mod:`blastscan.classifiers` finds by scanning its modules, so a new family is one new module.
    Hyper-parameters and defaults come from the signature (``random_state`` is the seed); ``params``
    (a class's ``param_specs`` when omitted) only says which values each accepts.

    Parameters
    ----------
    name, summary : str
    params : dict of str to Param, optional
        Exactly one entry per parameter of the signature other than ``random_state``.
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
    """

    def deco(factory):
        ranges = dict(getattr(factory, "param_specs", {}) if params is None else params)
        defaults = signature_defaults(factory)
        if list(ranges) != list(defaults):
            raise TypeError(f"classifier '{name}': the signature's parameters {list(defaults)} and the declared "
                            f"value ranges {list(ranges)} differ (or are in another order)")
        spec = ClassifierSpec(name, summary, factory, ranges, defaults, scale, tuple(map(tuple, libraries)),
                              default, order)
        setattr(factory, _SPEC_ATTR, spec)
        return factory

    return deco


def specs_in(module) -> list[ClassifierSpec]:
    """The classifier families declared in ``module`` itself (not those it imports from elsewhere)."""
    found = []
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        # vars(): a subclass of a registered class inherits the attribute but is not registered itself
        spec = vars(obj).get(_SPEC_ATTR) if hasattr(obj, "__dict__") else None
        if spec is not None:
            found.append(spec)
    return found


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
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("model", model)])


# ------------------------------------------------------------------------------------------------
# binary estimators
class BinaryClassifier(ClassifierMixin, BaseEstimator):
    """Base of our own two-class estimators.

    Subclasses take their hyper-parameters in ``__init__`` (which stores them unchanged, as scikit-learn
    requires; the defaults live there only), give each one's valid values in ``param_specs``, and
    implement ``_fit(X, y01, groups)`` with labels encoded 0/1 in the order of ``classes_``, and
    ``_proba1(X)``: the probability of ``classes_[1]`` (P(ALL) for labels 0 = HEM, 1 = ALL).
    """

    param_specs: ClassVar[dict[str, Param]] = {}

    def _check_params(self) -> None:
        for name, spec in self.param_specs.items():
            spec.check(name, getattr(self, name))

    def fit(self, X, y, groups=None):
        """Fit on ``X`` (n, d) and two-class ``y``; ``groups`` (one id per row, e.g. the subject) keeps
        every internal split group-disjoint. Returns ``self``."""
        self._check_params()
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
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

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
