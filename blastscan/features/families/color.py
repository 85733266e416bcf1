"""Colour family (stain-robust): the nucleus's colour *relative to the same cell's cytoplasm*.

Every C-NMC subject's slides were stained together, so a cell's absolute colour tells the stain batch
(the subject) more than the cell (see :mod:`blastscan.features.families.color_absolute`). Each feature here is a
ratio or a difference between the nucleus and the cytoplasm of one cell, in optical density (OD,
``-log10((I + 1) / 256)`` per RGB channel, Beer-Lambert: proportional to the amount of dye), in
haematoxylin / eosin density (``skimage.color.rgb2hed`` colour deconvolution), HSV and CIE Lab. A
stain that is uniformly stronger scales the OD of both regions alike and cancels in the OD ratios.

Per-image stain normalisation (Reinhard, Macenko) is deliberately not offered: on a single-cell image it
estimates the stain from the same cell, which amounts to the within-cell comparison done here, with
extra parameters. When the cytoplasm has fewer than :data:`MIN_REGION_PIXELS` pixels (a cell that is
nearly all nucleus), the cell's outer rim (:data:`RIM_PX` px) stands in for it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2lab

from blastscan.features.base import FeatureInfo
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import CellContext, saturation

__all__ = ["ColorExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "compute", "config", "MIN_REGION_PIXELS", "RIM_PX"]

FAMILY = "color"
VERSION = "2"
MIN_REGION_PIXELS = 50
RIM_PX = 3
_EPS = 1e-6

_CYTO = "the cytoplasm (the cell's outer rim when the cytoplasm is too small)"
FEATURES: list[FeatureInfo] = [
    *[FeatureInfo(f"color_nucleus_od_ratio_{c}", FAMILY,
                  f"mean {name} optical density over the nucleus / the same over {_CYTO}", "1", "nucleus/cytoplasm")
      for c, name in (("r", "red"), ("g", "green"), ("b", "blue"))],
    *[FeatureInfo(f"color_nucleus_od_chroma_diff_{c}", FAMILY,
                  f"{name} share of the optical density, OD_{c} / (OD_r + OD_g + OD_b) of the mean nucleus OD, minus "
                  f"the same of {_CYTO} (hue of the absorbed light, independent of stain strength)", "1",
                  "nucleus/cytoplasm")
      for c, name in (("r", "red"), ("g", "green"), ("b", "blue"))],
    *[FeatureInfo(f"color_nucleus_{s}_contrast", FAMILY,
                  f"(mean {name} density over the nucleus - the same over {_CYTO}) / (sum of their absolute values); "
                  "skimage rgb2hed deconvolution; -1..1", "1", "nucleus/cytoplasm")
      for s, name in (("hed_h", "haematoxylin"), ("hed_e", "eosin"))],
    FeatureInfo("color_nucleus_saturation_ratio", FAMILY,
                f"mean HSV saturation over the nucleus / the same over {_CYTO}", "1", "nucleus/cytoplasm"),
    FeatureInfo("color_nucleus_lightness_ratio", FAMILY,
                f"CIE Lab L* of the nucleus's mean sRGB colour / the same of {_CYTO}", "1", "nucleus/cytoplasm"),
    FeatureInfo("color_nucleus_delta_e", FAMILY,
                f"CIE76 colour difference between the Lab colours of the mean sRGB of the nucleus and of {_CYTO}",
                "Lab units", "nucleus/cytoplasm"),
]
FEATURE_NAMES = [f.name for f in FEATURES]


def config() -> dict:
    """Settings of this family that change its output."""
    return {"min_region_pixels": MIN_REGION_PIXELS, "rim_px": RIM_PX, "od": "-log10((I+1)/256)"}


def _rim(cell: np.ndarray) -> np.ndarray:
    return cell & ~ndi.binary_erosion(cell, iterations=RIM_PX, border_value=0)


def compute(ctx: CellContext) -> dict[str, float]:
    """Stain-relative colour features of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    cyto = ctx.cytoplasm
    if cyto.sum() < MIN_REGION_PIXELS:
        cyto = _rim(ctx.cell)
    nuc = ctx.nucleus
    od, hed = ctx.od, ctx.hed
    od_n, od_c = od[nuc].mean(0), od[cyto].mean(0)
    h_n, h_c = hed[nuc][:, :2].mean(0), hed[cyto][:, :2].mean(0)
    rgb_n, rgb_c = ctx.rgb[nuc], ctx.rgb[cyto]
    mean_rgb = np.stack([rgb_n.mean(0), rgb_c.mean(0)]) / 255.0
    lab_n, lab_c = rgb2lab(mean_rgb[None])[0]
    sat_n, sat_c = saturation(rgb_n[None])[0].mean(), saturation(rgb_c[None])[0].mean()
    chroma_n, chroma_c = od_n / max(od_n.sum(), _EPS), od_c / max(od_c.sum(), _EPS)
    vals = [
        *(od_n / np.maximum(od_c, _EPS)),
        *(chroma_n - chroma_c),
        *((h_n - h_c) / np.maximum(np.abs(h_n) + np.abs(h_c), _EPS)),
        sat_n / max(sat_c, _EPS),
        lab_n[0] / max(lab_c[0], _EPS),
        float(np.linalg.norm(lab_n - lab_c)),
    ]
    return dict(zip(FEATURE_NAMES, map(float, vals), strict=True))


@register_family
class ColorExtractor(FamilyExtractor):
    """The ``color`` family as an extractor (in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 20, True

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
