"""Small rules every command shares: lists from the command line, classifier parameters from ``--param``
and ``--params-file`` (merged here and nowhere else), worker counts, and options left unset."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from blastscan.errors import BlastscanError

__all__ = ["split_list", "parse_params", "load_params", "params_for", "resolve_jobs", "clean_options"]


def resolve_jobs(jobs: int | None) -> int:
    """Worker processes: ``None`` or ``<= 0`` means all cores."""
    if jobs is None or jobs <= 0:
        return max(1, os.cpu_count() or 1)
    return int(jobs)


def clean_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` without the entries left unset (``None``)."""
    return {k: v for k, v in (options or {}).items() if v is not None}


def split_list(value: str | Sequence[str]) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (lists pass through), without empties or repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return json.loads(text)  # lists such as [64,32]
    except ValueError:
        return text


def parse_params(items: Sequence[str] | Mapping | None) -> dict[str, dict[str, Any]]:
    """``["svm.C=10", "xgboost.max_depth=3"]`` -> ``{"svm": {"C": 10}, "xgboost": {"max_depth": 3}}``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): dict(v) for k, v in items.items()}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        clf, dot, name = key.strip().partition(".")
        if not sep or not dot or not clf or not name:
            raise BlastscanError(f"--param {item}", "expected CLASSIFIER.NAME=VALUE, e.g. svm.C=10")
        out.setdefault(clf, {})[name] = _parse_value(value.strip())
    return out


def load_params(items: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Classifier parameters from a JSON file (``{"svm": {"C": 10}}``) overridden by ``--param`` items."""
    out: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise BlastscanError(str(path), f"cannot read ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise BlastscanError(str(path), f"not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BlastscanError(str(path), 'expected {"classifier": {"parameter": value, ...}, ...}')
        out = parse_params(data)
    for clf, values in parse_params(items).items():
        out.setdefault(clf, {}).update(values)
    return out


def params_for(classifier: str, params: Sequence[str] | Mapping | None = None,
               path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parameters of one ``classifier`` from ``--param`` items / a mapping and a params file.

    A params file may be shared with ``compare`` and name other classifiers: only this one's entry
    counts. A ``--param`` naming another classifier is an error. A flat mapping (``{"C": 10}``) is taken
    as the classifier's own parameters.
    """
    if isinstance(params, Mapping) and params and not all(isinstance(v, Mapping) for v in params.values()):
        given = {classifier: dict(params)}
    else:
        given = parse_params(params)
    other = sorted(set(given) - {classifier})
    if other:
        raise BlastscanError(f"--param {other[0]}.*", f"'{other[0]}' is not the trained classifier ({classifier})")
    from_file = load_params(None, path).get(classifier, {}) if path is not None else {}
    return {**from_file, **given.get(classifier, {})}
