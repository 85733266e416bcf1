"""The options every command shares, parsed once at the edge: :class:`DeepOptions` (how the deep backbones
are built and run, one frozen object from the command line to the extractors and the store), lists from the
command line, classifier parameters from ``--param`` and ``--params-file`` (merged here and nowhere else) and
worker counts."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from blastscan.errors import BlastscanError

__all__ = ["DeepOptions", "split_list", "parse_params", "load_params", "params_for", "resolve_jobs"]

_OUTPUT = {"output": True}  # the field changes the features: it joins the extractor's config (its store identity)


@dataclass(frozen=True)
class DeepOptions:
    """How the deep backbones are built and run, as the deep option group of the command line gives it
    (``--weights-dir``, ``--random-weights``, ``--input-size``, ``--precision``, ``--engine``,
    ``--batch-size``): built once, never changed after (a changed copy is :meth:`replace`), handed to every
    extractor of a feature set; the handcrafted families take it and need nothing of it.

    Fields whose metadata says ``output`` change the features, so they are part of the extractor's config
    and its identity in the store (:meth:`output_fields`; the weights join it by their sha256, found from
    ``weights_dir``). The others say where things are or how fast they run: ``weights_dir``,
    ``batch_size``, ``engine`` (in float32 the engines agree to float32 rounding; a bf16 table records its
    engine, see :mod:`blastscan.features.deep`), ``cpu`` and ``embedded_backbones``.

    Parameters
    ----------
    weights_dir : path, optional
        Folder holding the weight files, or a file (default ``$BLASTSCAN_WEIGHTS_DIR``, else the Keras cache).
    random_weights : bool
        Seeded random weights (tests only: the embeddings are meaningless).
    input_size : int, optional
        Square input size in pixels (default: each backbone's own).
    precision : {"auto", "float32", "bf16"}, optional
        The forward pass's arithmetic (None: float32, the library's default; the command line's is auto).
    engine : {"auto", "onnxruntime", "openvino", "tensorflow"}, optional
        What runs the network (None: ``$BLASTSCAN_ENGINE``, else auto).
    batch_size : int, optional
        Images per forward pass (None: 32).
    input_mode, tta, layer : optional
        The options a variant name carries (``inception_v3_grey_tta8``, ``inception_v3_mixed7``; see
        :mod:`blastscan.features.deep_input`): set from the name, not from the command line.
    cpu : Cpu, optional
        The CPU the ``auto`` choices are made for (default: this machine's).
    embedded_backbones : dict, optional
        A data-only bundle's own backbone graphs, by name (no weight files are then looked up).

    Examples
    --------
    >>> DeepOptions(precision="float32", batch_size=8).replace(tta=8).tta
    8
    >>> DeepOptions.from_mapping({"weigths_dir": "w"})
    Traceback (most recent call last):
    ...
    blastscan.errors.BlastscanError: extractor options: unknown option 'weigths_dir'; ...
    """

    weights_dir: str | os.PathLike | None = None
    random_weights: bool = field(default=False, metadata=_OUTPUT)
    input_size: int | None = field(default=None, metadata=_OUTPUT)
    batch_size: int | None = None
    precision: str | None = field(default=None, metadata=_OUTPUT)
    engine: str | None = None
    input_mode: str | None = field(default=None, metadata=_OUTPUT)
    tta: int | None = field(default=None, metadata=_OUTPUT)
    layer: str | None = field(default=None, metadata=_OUTPUT)
    cpu: Any = None
    embedded_backbones: Mapping[str, Any] | None = field(default=None, hash=False, repr=False)

    @classmethod
    def output_fields(cls) -> tuple[str, ...]:
        """The fields that change the features (the rest do not)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("output"))

    @classmethod
    def from_mapping(cls, options: "DeepOptions | Mapping[str, Any] | None",
                     what: str = "extractor options") -> "DeepOptions":
        """``options`` as a :class:`DeepOptions`: one as is, a mapping (a Python caller's dict, a run's or a
        bundle's record) with its unset (``None``) entries left at their defaults. A key that is not a field
        (a misspelt option) raises :class:`BlastscanError` naming it."""
        if isinstance(options, cls):
            return options
        options = dict(options or {})
        _check_names(cls, options, what)
        return cls(**{k: v for k, v in options.items() if v is not None})

    def replace(self, **changes: Any) -> "DeepOptions":
        """A copy with ``changes`` (a misspelt name raises :class:`BlastscanError`)."""
        _check_names(type(self), changes, "extractor options")
        return dataclasses.replace(self, **changes)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults."""
        default = type(self)()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def record(self) -> dict[str, Any]:
        """The options as run records and bundles write them (``extractor_options``): those set, without
        the machine's CPU and a bundle's graphs; :meth:`from_mapping` reads them back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("cpu", "embedded_backbones") and getattr(self, f.name) is not None}
        if out.get("weights_dir") is not None:
            out["weights_dir"] = str(out["weights_dir"])
        return out


def _check_names(cls, options: Mapping[str, Any], what: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in options if k not in names)
    if unknown:
        raise BlastscanError(what, f"unknown option '{unknown[0]}'; choose from: {', '.join(names)}")


def resolve_jobs(jobs: int | None) -> int:
    """Worker processes: ``None`` or ``<= 0`` means all cores."""
    if jobs is None or jobs <= 0:
        return max(1, os.cpu_count() or 1)
    return int(jobs)


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
