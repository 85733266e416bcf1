"""The ``handcrafted`` extractor: shape, colour and texture families over one shared cell context.

Each image is segmented once (:func:`blastscan.features.segmentation.build_context`); every family
reads the same crop, masks, grey and quantised images. Adding a family is one module with ``FAMILY``,
``FEATURES``, ``FEATURE_NAMES`` and ``compute(ctx) -> {name: value}``, listed in :data:`FAMILIES`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.features import color, morphology, segmentation, texture
from blastscan.features.base import FeatureInfo, PerImageExtractor, register_extractor

__all__ = ["HandcraftedExtractor", "FAMILIES", "feature_dictionary", "families"]

FAMILIES = (morphology, color, texture)


def feature_dictionary(family: str | None = None) -> list[FeatureInfo]:
    """Every handcrafted feature (name, family, definition, unit), in column order.

    Parameters
    ----------
    family : str, optional
        Keep only this family (``"shape"``, ``"color"`` or ``"texture"``).
    """
    infos = [info for fam in FAMILIES for info in fam.FEATURES]
    if family is None:
        return infos
    if family not in families():
        raise BlastscanError("--family", f"unknown family '{family}'; choose from: {', '.join(families())}")
    return [info for info in infos if info.family == family]


def families() -> list[str]:
    """Names of the handcrafted families, in column order."""
    return [fam.FAMILY for fam in FAMILIES]


@register_extractor("handcrafted")
class HandcraftedExtractor(PerImageExtractor):
    """Shape, colour and texture features of one segmented cell.

    Options meant for other extractors (``weights_dir``, ``input_size``...) are accepted and ignored,
    so one option set serves a whole feature set. The settings that change the output are constants of
    the family modules and are all listed by :meth:`config` (and so in the store identity).

    Examples
    --------
    >>> ext = HandcraftedExtractor()
    >>> vec = ext.compute(image)  # doctest: +SKIP
    >>> vec.shape == (len(ext.feature_names),)  # doctest: +SKIP
    True
    """

    name = "handcrafted"
    version = "1"

    def __init__(self, **_: Any):
        pass

    @property
    def feature_names(self) -> list[str]:
        return [name for fam in FAMILIES for name in fam.FEATURE_NAMES]

    def config(self) -> dict[str, Any]:
        s = segmentation
        return {
            "grey_levels": s.GREY_LEVELS,
            "quantise_percentiles": list(s.QUANTISE_PERCENTILES),
            "background_max": s.BACKGROUND_MAX,
            "min_cell_area": s.MIN_CELL_AREA,
            "max_border_fraction": s.MAX_BORDER_FRACTION,
            "min_nucleus_fraction": s.MIN_NUCLEUS_FRACTION,
            "nucleus_smooth_sigma": s.NUCLEUS_SMOOTH_SIGMA,
            "nucleus_clean_radius": s.NUCLEUS_CLEAN_RADIUS,
            "glcm_distances": list(texture.GLCM_DISTANCES),
            "lbp": [texture.LBP_POINTS, texture.LBP_RADIUS],
            "log_sigmas": list(texture.LOG_SIGMAS),
            "color_min_region_pixels": color.MIN_REGION_PIXELS,
        }

    def compute(self, image: np.ndarray) -> np.ndarray:
        """Features of one RGB uint8 image, in :attr:`feature_names` order.

        Raises
        ------
        BlastscanError
            When the cell cannot be segmented, or a feature is not finite (the reason names it).
        """
        ctx = segmentation.build_context(np.asarray(image))
        values: list[float] = []
        for fam in FAMILIES:
            got = fam.compute(ctx)
            values += [got[name] for name in fam.FEATURE_NAMES]
        vec = np.asarray(values, dtype=np.float32)
        bad = ~np.isfinite(vec)
        if bad.any():
            names = [n for n, b in zip(self.feature_names, bad) if b]
            raise BlastscanError("features", f"non-finite value for {', '.join(names[:3])}"
                                             + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
        return vec
