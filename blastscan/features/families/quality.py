"""Quality family: how plausible a cell's nucleus mask is (not a description of the cell).

Recorded per cell so a wrong mask is never silently wrong: the values behind the flag and the flag
itself (:func:`blastscan.features.segmentation.mask_quality`). Not part of ``handcrafted``: use it to
filter or inspect cells (``blastscan extract -f quality --out table.csv``, ``blastscan masks``).
"""

from __future__ import annotations

from blastscan.features.base import FeatureInfo
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import QUALITY_LIMITS, CellContext, mask_quality

__all__ = ["QualityExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "compute", "config"]

FAMILY = "quality"
VERSION = "1"

_L = QUALITY_LIMITS
FEATURES: list[FeatureInfo] = [
    FeatureInfo("quality_cell_nc_ratio", FAMILY, "nucleus area / cell area (pixel counts)", "1", "cell"),
    FeatureInfo("quality_nucleus_solidity", FAMILY, "nucleus area / area of its convex hull (pixel counts)", "1",
                "nucleus"),
    FeatureInfo("quality_nucleus_kept_share", FAMILY,
                "share of the thresholded, cleaned nucleus pixels in its largest component", "1", "nucleus"),
    FeatureInfo("quality_mask_ok", FAMILY,
                f"1 when N:C is in {_L['nc_ratio']}, solidity in {_L['nucleus_solidity']} and kept share in "
                f"{_L['nucleus_kept_share']}, else 0", "flag", "cell"),
]
FEATURE_NAMES = [f.name for f in FEATURES]


def config() -> dict:
    """Settings of this family that change its output."""
    return {"limits": {k: list(v) for k, v in QUALITY_LIMITS.items()}}


def compute(ctx: CellContext) -> dict[str, float]:
    """Mask-quality values of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    values, reasons = mask_quality(ctx)
    vals = [values["nc_ratio"], values["nucleus_solidity"], values["nucleus_kept_share"], float(not reasons)]
    return dict(zip(FEATURE_NAMES, vals, strict=True))


@register_family
class QualityExtractor(FamilyExtractor):
    """The ``quality`` family as an extractor (not in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 60, False

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
