"""The handcrafted families as feature sets: ``shape``, ``color``, ``texture``, ``chromatin`` (the union
``handcrafted``), plus ``color_absolute``, ``quality`` and ``size`` outside the union.

Each family is one module with ``FAMILY``, ``VERSION``, ``FEATURES``, ``FEATURE_NAMES``, ``config()`` and
``compute(ctx) -> {name: value}``, listed in :data:`FAMILIES`; each is its own extractor, so its own
store table and version: changing one family does not drop the others' cached tables. All share one
segmentation per image: their extractors declare the context ``"cell"``, and the extract pipeline
builds :func:`blastscan.features.segmentation.build_context` once per image for all of them.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.features import segmentation
from blastscan.features.base import FeatureInfo, PerImageExtractor, get_extractor, register_extractor, register_union
from blastscan.options import DeepOptions

__all__ = ["FamilyExtractor", "HandcraftedExtractor", "FAMILIES", "UNION", "feature_dictionary", "families",
           "family_extractor"]

#: Family module names (under ``blastscan.features``), in dictionary order.
FAMILIES = ("shape", "color", "texture", "chromatin", "color_absolute", "quality", "size")
#: The members of the ``handcrafted`` feature set: the families that describe the cell, not its stain.
UNION = ("shape", "color", "texture", "chromatin")


def _module(family: str):
    return importlib.import_module(f"blastscan.features.{family}")


def feature_dictionary(family: str | None = None) -> list[FeatureInfo]:
    """Every handcrafted feature (name, family, definition, unit, region), in column order.

    Parameters
    ----------
    family : str, optional
        Keep only this family (one of :func:`families`, or ``"handcrafted"`` for the union).
    """
    if family is None:
        chosen = FAMILIES
    elif family == "handcrafted":
        chosen = UNION
    elif family in FAMILIES:
        chosen = (family,)
    else:
        raise BlastscanError("--family", f"unknown family '{family}'; choose from: handcrafted, {', '.join(FAMILIES)}")
    return [info for fam in chosen for info in _module(fam).FEATURES]


def families() -> list[str]:
    """Names of the handcrafted families, in dictionary order."""
    return list(FAMILIES)


class FamilyExtractor(PerImageExtractor):
    """One handcrafted family of one segmented cell (subclasses set ``family``).

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

    family: str = ""
    context = "cell"

    def __init__(self, options: DeepOptions | None = None):
        pass

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.family

    @property
    def version(self) -> str:  # type: ignore[override]
        return _module(self.family).VERSION

    @property
    def feature_names(self) -> list[str]:
        return list(_module(self.family).FEATURE_NAMES)

    def config(self) -> dict[str, Any]:
        return {"segmentation": segmentation.config(), self.family: _module(self.family).config()}

    def make_context(self, image: np.ndarray) -> segmentation.CellContext:
        return segmentation.build_context(np.asarray(image))

    def compute_context(self, ctx: segmentation.CellContext) -> np.ndarray:
        """Features from a shared context, in :attr:`feature_names` order.

        Raises
        ------
        BlastscanError
            When a feature is not finite (the reason names it).
        """
        got = _module(self.family).compute(ctx)
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


def _family_class(family: str) -> type[FamilyExtractor]:
    cls = type(f"{family.title().replace('_', '')}Extractor", (FamilyExtractor,),
               {"family": family, "__module__": __name__, "__doc__": f"The ``{family}`` family (see its module)."})
    globals()[cls.__name__] = cls  # importable by name: joblib workers unpickle it
    return cls


for _fam in FAMILIES:
    register_extractor(_fam)(_family_class(_fam))
register_union("handcrafted", UNION)


def family_extractor(family: str) -> FamilyExtractor:
    """The extractor of one family (same as ``get_extractor(family)``)."""
    return get_extractor(family)  # type: ignore[return-value]


class HandcraftedExtractor:
    """All families of :data:`UNION` of one image at once, one segmentation (for notebooks and benchmarks).

    Not an extractor of the store: ``handcrafted`` in a feature set stands for its families' tables.
    """

    def __init__(self, families=UNION):
        self.extractors = [family_extractor(f) for f in families]

    @property
    def feature_names(self) -> list[str]:
        return [n for e in self.extractors for n in e.feature_names]

    def compute(self, image: np.ndarray) -> np.ndarray:
        ctx = self.extractors[0].make_context(image)
        return np.concatenate([e.compute_context(ctx) for e in self.extractors])
