"""The extractor interface and the registry that maps feature-set names to extractors.

An extractor turns images into a float32 matrix with fixed, named columns. Its identity in the feature
store is ``name@version`` plus a short hash of the configuration that changes its output, so features
computed with other settings (input size, weights) never mix.

Two kinds exist:

* :class:`PerImageExtractor` (handcrafted): ``compute(image) -> 1-D float32``; the extract pipeline
  parallelises it over processes with joblib.
* :class:`BatchExtractor` (deep): ``compute_paths(paths)`` yields results per batch; it overlaps its
  own decoding with inference.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.registry import Registry
from blastscan.options import DeepOptions

__all__ = [
    "Extractor",
    "PerImageExtractor",
    "BatchExtractor",
    "BatchResult",
    "FeatureInfo",
    "EXTRACTORS",
    "UNIONS",
    "register_extractor",
    "get_extractor",
    "available_extractors",
    "parse_feature_set",
    "register_union",
    "register_variants",
    "resolve_name",
]


@dataclass(frozen=True)
class FeatureInfo:
    """One entry of the feature dictionary: ``name`` (stable), ``family``, ``definition`` (the formula),
    ``unit`` and ``region`` (cell, nucleus, cytoplasm, nucleus_inner...: where it is measured)."""

    name: str
    family: str
    definition: str
    unit: str = ""
    region: str = ""


@dataclass
class BatchResult:
    """What a batch extractor yields for one batch.

    ``indices`` are positions in the ``paths`` list given to ``compute_paths``; ``features`` has one
    row per index (float32). ``failures`` maps a position to the reason it could not be computed.
    """

    indices: list[int]
    features: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


class Extractor:
    """Base of all extractors. Subclasses set ``name``, ``version`` and ``feature_names``."""

    name: str = ""
    version: str = "1"
    kind: str = ""  # "per_image" or "batch"
    #: The options a deep extractor was built with (the others use none and keep the defaults).
    options: DeepOptions = DeepOptions()
    #: What runs a deep extractor, empty for the others: the precision asked (``auto`` too) and the one it
    #: resolved to, the engine chosen, and once built the engine (and version) that ran.
    precision_asked: str = ""
    precision: str = ""
    engine_choice: str = ""
    engine_used: str | None = None
    #: Images per forward pass, threads of the forward (None: every core) and the weight file read, for a
    #: deep extractor (None for the others).
    batch_size: int | None = None
    threads: int | None = None
    weights_path: str | os.PathLike | None = None

    @property
    def feature_names(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The settings that change this extractor's output (JSON-serialisable)."""
        return {}

    @property
    def identity(self) -> str:
        """``name@version`` plus, when the config is not empty, ``-`` and 10 hex of its hash."""
        cfg = self.config()
        base = f"{self.name}@{self.version}"
        if not cfg:
            return base
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
        return f"{base}-{digest}"

    def check_runtime(self) -> None:
        """Raise :class:`BlastscanError` now when this extractor cannot run on this machine (default: it can)."""

    def run_key(self) -> tuple:
        """What, besides the identity, decides how it runs: two extractors with the same identity and run
        key are interchangeable (one built network serves both)."""
        return ()

    def build_options(self) -> dict[str, Any]:
        """Constructor options (JSON-serialisable) that rebuild this extractor with the same output;
        options that only say where things are now (weights folder, batch size) are not among them."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this extractor exactly (stored in bundles and run records)."""
        return {
            "name": self.name,
            "version": self.version,
            "identity": self.identity,
            "config": self.config(),
            "n_features": len(self.feature_names),
        }


class PerImageExtractor(Extractor):
    """An extractor that works on one decoded RGB uint8 image (H, W, 3) at a time."""

    kind = "per_image"
    #: Extractors with the same non-empty ``context`` key share one per-image context (the handcrafted
    #: families: one segmentation): the extract pipeline decodes an image once, calls ``make_context``
    #: once and ``compute_context(ctx)`` for each of them. Empty: ``compute(image)`` only.
    context: str = ""

    def compute(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        """Return a float32 vector of ``len(feature_names)``; raise ``BlastscanError`` when the
        image cannot be featurised (the pipeline records the reason as a failure)."""
        raise NotImplementedError

    def make_context(self, image: np.ndarray) -> Any:
        """The shared per-image work of extractors with this ``context`` key (default: the image)."""
        return image

    def compute_context(self, ctx: Any) -> np.ndarray:
        """``compute`` from a context made by :meth:`make_context` (default: ``compute(ctx)``)."""
        return self.compute(ctx)


class BatchExtractor(Extractor):
    """An extractor that reads and processes image files in batches (deep networks)."""

    kind = "batch"

    def compute_paths(self, paths: Sequence[str]) -> Iterator[BatchResult]:  # pragma: no cover
        """Yield :class:`BatchResult` objects that together cover every position of ``paths``."""
        raise NotImplementedError


#: Extractor factories by name. The first lookup imports the one folder of handcrafted families and the
#: modules that define the other kinds (each registers its own: a backbone is one ``register_backbone`` call
#: in ``deep``); nothing else under ``features/`` is imported. Deep backbones register without importing
#: TensorFlow (it loads when an embedding is first computed).
EXTRACTORS: Registry[Callable[..., Extractor]] = Registry(
    "feature set", "blastscan.features.families",
    modules=("blastscan.features.handcrafted", "blastscan.features.deep", "blastscan.features.activations"))
#: Named unions: a feature-set name that stands for several extractors (``handcrafted`` = its families),
#: expanded by :func:`parse_feature_set`, so each member keeps its own store table and version. An entry
#: gives the member names when called (they may be derived from what is registered).
UNIONS: Registry[Callable[[], Sequence[str]]] = Registry("feature-set union")


def register_extractor(name: str):
    """Decorator: register a factory (class or function) that builds the extractor ``name`` (a name
    registered twice raises ``ValueError``).

    The factory is called with one :class:`~blastscan.options.DeepOptions`, the same for a whole feature
    set (an extractor uses the fields it needs: the handcrafted families none).
    """
    return EXTRACTORS.register(name)


def register_union(name: str, members: Sequence[str] | Callable[[], Sequence[str]]) -> None:
    """Register ``name`` as the feature set ``"+".join(members)`` (members are extractor names, or a function
    that gives them when the name is expanded)."""
    UNIONS.register(name, members if callable(members) else (lambda: tuple(members)))


def _union_members(name: str) -> tuple[str, ...] | None:
    """The members of the union ``name``, or None when ``name`` is not a union."""
    EXTRACTORS.discover()  # the unions are registered by the modules that define their members
    return tuple(UNIONS.get(name)()) if name in UNIONS else None


#: Parameterised names (``inception_v3_grey_tta8``): functions that read a name into ``(canonical name,
#: registered name, options)``, or return None when the name is not theirs (see :func:`register_variants`).
_VARIANTS: list[Callable[[str], "tuple[str, str, dict] | None"]] = []
_VARIANT_HINTS: list[str] = []


def register_variants(parse: Callable[[str], "tuple[str, str, dict] | None"], hint: str = "") -> None:
    """Let ``parse`` read names that are a registered extractor's name plus options (the deep backbones'
    ``<backbone>_grey_tta8``): it returns ``(canonical name, registered name, options)``, None for a name
    that is not its own, and raises :class:`BlastscanError` for one of its names with a misspelt option.
    ``hint`` (how such names are written) is added to the error for an unknown feature-set name."""
    if parse not in _VARIANTS:
        _VARIANTS.append(parse)
        if hint:
            _VARIANT_HINTS.append(hint)


def resolve_name(name: str) -> tuple[str, str, dict[str, Any]]:
    """``(canonical name, registered name, options)`` of an extractor name; a name no variant parser claims
    is returned as is (``(name, name, {})``), known or not."""
    if name in EXTRACTORS or _union_members(name) is not None:
        return name, name, {}
    for parse in _VARIANTS:
        got = parse(name)
        if got is not None:
            return got
    return name, name, {}


def available_extractors() -> list[str]:
    """Names of all registered extractors and named unions."""
    EXTRACTORS.discover()
    return sorted({*EXTRACTORS.names(), *UNIONS.names()})


def get_extractor(name: str, options: DeepOptions | None = None, **fields: Any) -> Extractor:
    """Build the extractor registered as ``name`` with ``options`` (``fields``: shorthand for
    ``DeepOptions(**fields)``; a misspelt one raises :class:`BlastscanError`); a variant name
    (``inception_v3_grey``) builds its registered extractor with the options the name carries."""
    _, registered, name_options = resolve_name(name)
    return EXTRACTORS.get(registered)((options or DeepOptions()).replace(**{**fields, **name_options}))


def parse_feature_set(spec: str) -> list[str]:
    """Split ``"handcrafted+inception_v3"`` into extractor names (unions expanded), checking each is known."""
    parts = [part.strip() for part in str(spec).split("+") if part.strip()]
    if not parts:
        raise BlastscanError(f"feature set '{spec}'", "is empty")
    known = available_extractors()
    names = [resolve_name(m)[0] for p in parts for m in (_union_members(p) or (p,))]  # variants: canonical names
    for n in names:
        if n not in known and resolve_name(n)[1] not in EXTRACTORS:
            raise BlastscanError(f"feature set '{spec}'", f"unknown part '{n}'; choose from: {', '.join(known)}"
                                                          + "".join(f"; {h}" for h in _VARIANT_HINTS))
    if len(set(names)) != len(names):
        raise BlastscanError(f"feature set '{spec}'", "names an extractor twice")
    return names
