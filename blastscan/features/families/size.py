"""Size family: how large the cell and its nucleus are, on a log scale.

Size is what holds up across C-NMC subjects (blasts are larger than normal lymphocytes, whatever the
stain), while colour and fine texture partly encode each subject's staining. This family takes the size
quantities of the ``shape`` family's definitions and logs them, so a linear model sees ratios. It is a
feature set of its own (``size``), not part of ``handcrafted`` (whose ``shape`` holds the same sizes).
"""

from __future__ import annotations

import numpy as np

from blastscan.features.base import FeatureInfo
from blastscan.features.families import shape
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import CellContext

__all__ = ["SizeExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "QUANTITIES", "compute", "config"]

FAMILY = "size"
VERSION = "1"
#: Shape quantities (in px or px²) of each region that describe its size.
QUANTITIES = ("area", "perimeter", "equivalent_diameter", "major_axis", "minor_axis", "feret_max")
_UNITS = {"area": "px²"}

FEATURES: list[FeatureInfo] = [
    FeatureInfo(f"size_{region}_log_{q}", FAMILY, f"ln(1 + shape_{region}_{q}) (see the shape family)",
                f"ln {_UNITS.get(q, 'px')}", region)
    for region in ("cell", "nucleus") for q in QUANTITIES
]
FEATURE_NAMES = [f.name for f in FEATURES]


def config() -> dict:
    """Settings of this family that change its output (the shape family's, whose sizes it logs)."""
    return {"shape": shape.config(), "shape_version": shape.VERSION, "quantities": list(QUANTITIES)}


def compute(ctx: CellContext) -> dict[str, float]:
    """Log sizes of the cell and the nucleus of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    got = shape.compute(ctx)
    return {f"size_{region}_log_{q}": float(np.log1p(got[f"shape_{region}_{q}"]))
            for region in ("cell", "nucleus") for q in QUANTITIES}


@register_family
class SizeExtractor(FamilyExtractor):
    """The ``size`` family as an extractor (not in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 70, False

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
