"""The handcrafted families as feature sets: ``shape``, ``color``, ``texture``, ``chromatin`` (the union
``handcrafted``), plus ``color_absolute``, ``quality`` and ``size`` outside the union.

Each family is one module of :mod:`blastscan.features.families` with ``FAMILY``, ``VERSION``, ``FEATURES``,
``FEATURE_NAMES``, ``config()`` and ``compute(ctx) -> {name: value}``, and one :class:`FamilyExtractor`
subclass registered with :func:`register_family` (which says where it sits in the dictionary and whether it
is in the union): adding a family is one new module there. Each is its own extractor, so its own store table
and version: changing one family does not drop the others' cached tables. All share one segmentation per
image: their extractors declare the context ``"cell"``, and the extract pipeline builds
:func:`blastscan.features.segmentation.build_context` once per image for all of them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.features import segmentation
from blastscan.features.base import (FeatureInfo, PerImageExtractor, get_extractor, register_extractor,
                                     register_union)
from blastscan.options import DeepOptions
from blastscan.registry import Registry

__all__ = ["FamilyExtractor", "HandcraftedExtractor", "FAMILIES", "UNION_NAME", "feature_dictionary", "families",
           "family_extractor", "register_family", "union"]

#: The family classes by name, found by importing the modules of :mod:`blastscan.features.families`.
FAMILIES: Registry[type["FamilyExtractor"]] = Registry("handcrafted family", "blastscan.features.families")
#: The feature set that stands for the families that describe the cell, not its stain.
UNION_NAME = "handcrafted"


def families() -> list[str]:
    """Names of the handcrafted families, in dictionary order (their ``order``)."""
    return [name for name, _ in sorted(FAMILIES.items(), key=lambda item: item[1].order)]


def union() -> list[str]:
    """The members of the ``handcrafted`` feature set (the families with ``in_union``), in dictionary order:
    the column order stored models record."""
    return [name for name in families() if FAMILIES.get(name).in_union]


def feature_dictionary(family: str | None = None) -> list[FeatureInfo]:
    """Every handcrafted feature (name, family, definition, unit, region), in column order.

    Parameters
    ----------
    family : str, optional
        Keep only this family (one of :func:`families`, or ``"handcrafted"`` for the union).
    """
    if family is None:
        chosen = families()
    elif family == UNION_NAME:
        chosen = union()
    elif family in FAMILIES:
        chosen = [family]
    else:
        raise BlastscanError("--family", f"unknown family '{family}'; choose from: handcrafted, "
                                         f"{', '.join(families())}")
    return [info for fam in chosen for info in FAMILIES.get(fam).features]


class FamilyExtractor(PerImageExtractor):
    """One handcrafted family of one segmented cell. A subclass (one per module of
    :mod:`blastscan.features.families`, registered with :func:`register_family`) sets ``name``, ``version``,
    ``features``, ``order`` and ``in_union``, and implements :meth:`measure` and :meth:`family_config`.

    It takes the feature set's :class:`~blastscan.options.DeepOptions` and needs none of them (a misspelt
    option is refused before, where the options are built). Its identity holds the family's version and the
    segmentation's and the family's settings.

    Examples
    --------
    >>> ext = family_extractor("shape")
    >>> vec = ext.compute(image)  # doctest: +SKIP
    >>> vec.shape == (len(ext.feature_names),)  # doctest: +SKIP
    True
    """

    #: The family's features (name, definition, unit, region), in column order.
    features: Sequence[FeatureInfo] = ()
    #: Position in the feature dictionary and in the union's columns (stored models record their column
    #: order: never renumber a family; a new one takes a free number).
    order: int = 0
    #: Whether the family is a member of the ``handcrafted`` feature set.
    in_union: bool = False
    context = "cell"

    def __init__(self, options: DeepOptions | None = None):
        pass

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def measure(self, ctx: segmentation.CellContext) -> dict[str, float]:  # pragma: no cover - overridden
        """The family's values of one segmented cell, by feature name."""
        raise NotImplementedError

    def family_config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """The family's settings that change its output."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"segmentation": segmentation.config(), self.name: self.family_config()}

    def make_context(self, image: np.ndarray) -> segmentation.CellContext:
        return segmentation.build_context(np.asarray(image))

    def compute_context(self, ctx: segmentation.CellContext) -> np.ndarray:
        """Features from a shared context, in :attr:`feature_names` order.

        Raises
        ------
        BlastscanError
            When a feature is not finite (the reason names it).
        """
        got = self.measure(ctx)
        names = self.feature_names
        vec = np.asarray([got[n] for n in names], dtype=np.float32)
        bad = ~np.isfinite(vec)
        if bad.any():
            which = [n for n, b in zip(names, bad) if b]
            raise BlastscanError("features", f"non-finite value for {', '.join(which[:3])}"
                                             + (f" and {len(which) - 3} more" if len(which) > 3 else ""))
        return vec

    def compute(self, image: np.ndarray) -> np.ndarray:
        """Features of one RGB uint8 image (segments it; see :meth:`compute_context` to share that).

        Raises
        ------
        BlastscanError
            When the cell cannot be segmented, or a feature is not finite.
        """
        return self.compute_context(self.make_context(image))


def register_family(cls: type[FamilyExtractor]) -> type[FamilyExtractor]:
    """Class decorator: register a family as a family and as the extractor of its ``name``."""
    FAMILIES.register(cls.name, cls)
    register_extractor(cls.name)(cls)
    return cls


register_union(UNION_NAME, union)


def family_extractor(family: str) -> FamilyExtractor:
    """The extractor of one family (same as ``get_extractor(family)``)."""
    return get_extractor(family)  # type: ignore[return-value]


class HandcraftedExtractor:
    """The families of :func:`union` (or ``families``) of one image at once, one segmentation (for notebooks
    and benchmarks).

    Not an extractor of the store: ``handcrafted`` in a feature set stands for its families' tables.
    """

    def __init__(self, families=None):
        self.extractors = [family_extractor(f) for f in (union() if families is None else families)]

    @property
    def feature_names(self) -> list[str]:
        return [n for e in self.extractors for n in e.feature_names]

    def compute(self, image: np.ndarray) -> np.ndarray:
        ctx = self.extractors[0].make_context(image)
        return np.concatenate([e.compute_context(ctx) for e in self.extractors])
