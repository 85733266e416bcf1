"""What every classifier family shares: the registry, parameter checks, binary-estimator plumbing and the
group-disjoint inner splits used by models that split their training data (SVM calibration, FCN early
stopping).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["Param", "ClassifierSpec", "register_classifier", "REGISTRY", "BinaryClassifier", "scaled",
           "inner_folds", "balanced_weights"]


# ------------------------------------------------------------------------------------------------
# parameters
@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its default, what it means, and which values are valid.

    A value is valid when it is one of ``choices``, or a number of ``kind`` (int or float; bool never
    counts as a number) inside ``[low, high]`` (``low`` excluded when ``open_low``).
    """

    default: Any
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
            noun = "an integer" if self.kind is int else "a number"
            parts.append(noun + (f" with {lo}x{hi}" if lo or hi else ""))
        return " or ".join(parts)

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` when ``value`` is not valid for parameter ``name``."""
        if any(value is c or (isinstance(value, str) and value == c) for c in self.choices):
            return
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


@dataclass(frozen=True)
class ClassifierSpec:
    """A registered family: ``build(random_state, **params)`` returns a fresh unfitted estimator."""

    name: str
    summary: str
    params: dict[str, Param]
    build: Callable[..., Any]


REGISTRY: dict[str, ClassifierSpec] = {}


def register_classifier(name: str, summary: str, params: dict[str, Param]):
    """Decorator: register ``build(random_state, **params)`` as the classifier family ``name``."""

    def deco(build):
        REGISTRY[name] = ClassifierSpec(name, summary, dict(params), build)
        return build

    return deco


def scaled(model):
    """``StandardScaler`` + ``model`` as a Pipeline whose last step is named ``model``."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("model", model)])


# ------------------------------------------------------------------------------------------------
# binary estimators
class BinaryClassifier(ClassifierMixin, BaseEstimator):
    """Base of our own two-class estimators.

    Subclasses list their hyper-parameters in ``param_specs`` (``__init__`` stores them unchanged, as
    scikit-learn requires), implement ``_fit(X, y01, groups)`` with labels encoded 0/1 in the order of
    ``classes_``, and ``_proba1(X)``: the probability of ``classes_[1]`` (P(ALL) for labels 0 = HEM,
    1 = ALL).
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
