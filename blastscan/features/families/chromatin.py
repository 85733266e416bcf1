"""Chromatin family: how the haematoxylin-stained chromatin is distributed inside the nucleus.

Blasts have fine, evenly dispersed chromatin and visible nucleoli; mature lymphocytes have coarse,
clumped chromatin. Every feature is relative to the same nucleus (a ratio, a share, or a value divided
by the nucleus's own median), so the stain's strength cancels:

* distribution of the haematoxylin density ``H`` (``skimage.color.rgb2hed``) over the eroded nucleus:
  coefficient of variation, skewness, excess kurtosis, inter-decile range / median;
* radial distribution (as CellProfiler's MeasureObjectIntensityDistribution): the share of the nucleus's
  total H in each of :data:`RADIAL_RINGS` rings of equal normalised distance from the outline, divided by
  the share of the area in that ring (1 everywhere = even chromatin);
* granularity spectrum (as CellProfiler's MeasureGranularity) of H inside the nucleus: the share of the
  H mass above the region's minimum removed by each greyscale opening of growing size;
* nucleoli: bright spots of the grey image inside the eroded nucleus (white top-hat of size
  :data:`SPOT_SIZE` above :data:`SPOT_CONTRAST` x the nucleus's median grey, at least :data:`SPOT_MIN_AREA`
  px) and, likewise, dark chromatin clumps (black top-hat).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from blastscan.features.base import FeatureInfo
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import CellContext

__all__ = ["ChromatinExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "compute", "config", "granularity",
           "radial_distribution", "spots"]

FAMILY = "chromatin"
VERSION = "1"
RADIAL_RINGS = 4
GRANULARITY_SIZES = (3, 7, 15)
SPOT_SIZE = 15
SPOT_CONTRAST = 0.15
SPOT_MIN_AREA = 8
_EPS = 1e-9

_INNER = "nucleus_inner"
FEATURES: list[FeatureInfo] = [
    FeatureInfo("chromatin_nucleus_h_cv", FAMILY, "std / mean of the haematoxylin density H over the region", "1", _INNER),
    FeatureInfo("chromatin_nucleus_h_skewness", FAMILY, "skewness E[(H-μ)³]/σ³ of H over the region", "1", _INNER),
    FeatureInfo("chromatin_nucleus_h_kurtosis", FAMILY, "excess kurtosis E[(H-μ)⁴]/σ⁴ - 3 of H over the region", "1",
                _INNER),
    FeatureInfo("chromatin_nucleus_h_idr", FAMILY, "(90th - 10th percentile) / median of H over the region", "1", _INNER),
    *[FeatureInfo(f"chromatin_nucleus_radial_h_ring{k}", FAMILY,
                  f"share of the nucleus's total H in ring {k} of {RADIAL_RINGS} (1 = at the outline; rings of equal "
                  "width in distance to the outline / its maximum) / share of the nucleus area in that ring", "1",
                  "nucleus")
      for k in range(1, RADIAL_RINGS + 1)],
    *[FeatureInfo(f"chromatin_nucleus_granularity_s{s}", FAMILY,
                  f"share of the nucleus's H mass (H - its minimum) removed by a greyscale opening with a {s}x{s} "
                  f"square beyond the previous size", "1", "nucleus")
      for s in GRANULARITY_SIZES],
    FeatureInfo("chromatin_nucleus_nucleoli_count", FAMILY,
                f"bright spots: white top-hat ({SPOT_SIZE}x{SPOT_SIZE}) of grey > {SPOT_CONTRAST:g} x median nucleus "
                f"grey, components of >= {SPOT_MIN_AREA} px", "count", _INNER),
    FeatureInfo("chromatin_nucleus_nucleoli_area_share", FAMILY, "total bright-spot area / region area", "1", _INNER),
    FeatureInfo("chromatin_nucleus_nucleoli_contrast", FAMILY,
                "mean white top-hat over the bright spots / median nucleus grey (0 without spots)", "1", _INNER),
    FeatureInfo("chromatin_nucleus_clump_count", FAMILY,
                f"dark clumps: black top-hat ({SPOT_SIZE}x{SPOT_SIZE}) of grey > {SPOT_CONTRAST:g} x median nucleus "
                f"grey, components of >= {SPOT_MIN_AREA} px", "count", _INNER),
    FeatureInfo("chromatin_nucleus_clump_area_share", FAMILY, "total dark-clump area / region area", "1", _INNER),
]
FEATURE_NAMES = [f.name for f in FEATURES]


def config() -> dict:
    """Settings of this family that change its output."""
    return {"radial_rings": RADIAL_RINGS, "granularity_sizes": list(GRANULARITY_SIZES), "spot_size": SPOT_SIZE,
            "spot_contrast": SPOT_CONTRAST, "spot_min_area": SPOT_MIN_AREA}


def radial_distribution(values: np.ndarray, mask: np.ndarray, rings: int = RADIAL_RINGS) -> np.ndarray:
    """Per ring (1 = outermost), share of ``values``'s sum over ``mask`` / share of the area."""
    dist = ndi.distance_transform_edt(mask)[mask]
    ring = np.minimum((dist - 1e-9) / max(dist.max(), _EPS) * rings, rings - 1).astype(np.int64)
    v = values[mask]
    mass = np.bincount(ring, weights=v, minlength=rings) / max(v.sum(), _EPS)
    area = np.bincount(ring, minlength=rings) / v.size
    return np.where(area > 0, mass / np.maximum(area, _EPS), 0.0)


def granularity(values: np.ndarray, mask: np.ndarray, sizes=GRANULARITY_SIZES) -> np.ndarray:
    """Share of the mass of ``values`` (above its minimum over ``mask``) removed by each opening size."""
    base = values - values[mask].min()
    img = np.where(mask, base, 0.0)  # outside: 0, so openings never import mass from outside
    total = float(img[mask].sum())
    if total <= _EPS:  # a constant region has no granules
        return np.zeros(len(sizes))
    prev, out = total, []
    for s in sizes:
        opened = ndi.grey_opening(img, size=(s, s))
        mass = float(opened[mask].sum())
        out.append((prev - mass) / total)
        prev = mass
    return np.asarray(out)


def spots(tophat: np.ndarray, region: np.ndarray, threshold: float) -> tuple[int, float, float]:
    """(count, area share, mean top-hat) of the components of ``tophat > threshold`` in ``region``."""
    labels, n = ndi.label((tophat > threshold) & region)
    if n == 0:
        return 0, 0.0, 0.0
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes >= SPOT_MIN_AREA) + 1
    if big.size == 0:
        return 0, 0.0, 0.0
    sel = np.isin(labels, big)
    return int(big.size), float(sel.sum() / region.sum()), float(tophat[sel].mean())


def compute(ctx: CellContext) -> dict[str, float]:
    """Chromatin features of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    box = ctx.nucleus_box(SPOT_SIZE)  # every filter below sees the nucleus and SPOT_SIZE px around it
    inner, nuc, cell = ctx.nucleus_inner[box], ctx.nucleus[box], ctx.cell[box]
    H = ctx.hed[box][..., 0]
    h = H[inner].astype(np.float64)
    mu, sd = h.mean(), h.std()
    z = (h - mu) / max(sd, _EPS)
    p10, p50, p90 = np.percentile(h, (10, 50, 90))
    vals = [sd / max(abs(mu), _EPS), float((z ** 3).mean()), float((z ** 4).mean() - 3.0),
            (p90 - p10) / max(abs(p50), _EPS)]
    vals += radial_distribution(H, nuc).tolist()
    vals += granularity(H.astype(np.float64), nuc).tolist()
    # Top-hats on the grey inside the cell (outside: the cell's mean, so the outline is not a spot).
    grey_box = ctx.grey[box]
    grey = np.where(cell, grey_box, np.float32(grey_box[cell].mean()))
    median = max(float(np.median(grey_box[nuc])), 1.0)
    size = (SPOT_SIZE, SPOT_SIZE)
    bright = grey - ndi.grey_opening(grey, size=size)
    dark = ndi.grey_closing(grey, size=size) - grey
    n, share, contrast = spots(bright, inner, SPOT_CONTRAST * median)
    vals += [n, share, contrast / median]
    n, share, _ = spots(dark, inner, SPOT_CONTRAST * median)
    vals += [n, share]
    return dict(zip(FEATURE_NAMES, map(float, vals), strict=True))


@register_family
class ChromatinExtractor(FamilyExtractor):
    """The ``chromatin`` family as an extractor (in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 40, True

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
