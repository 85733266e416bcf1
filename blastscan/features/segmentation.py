"""Cell, nucleus and cytoplasm masks, and the per-cell context every handcrafted family reads.

A C-NMC image is one segmented cell on a black background. The cell is the largest non-black
component (holes filled). The nucleus is the cell's *saturated* part: Otsu's threshold on the HSV
saturation ``(max - min) / max`` of the RGB channels, smoothed inside the cell (σ = 2 px, normalised
convolution), cleaned by closing, hole filling and opening (disc of radius 3), largest component.

Why saturation: with this stain the nucleus is a deeply saturated purple while the thin basophilic
cytoplasm rim is paler and greyer. The red channel does not separate them (the cytoplasm absorbs red
too): a red-channel threshold follows the dark chromatin *inside* the nucleus instead of its outline
(blastscan 0.x, ``handcrafted@1``; see ``docs/masks.png``). Everything is computed on the cell's
bounding box plus a margin, never on the whole 450 x 450 image.

A mask that is found but implausible is not an error: :func:`mask_quality` flags it (the ``quality``
feature set and the contact sheets of ``blastscan masks`` show the flag), so it is never silently wrong.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb
from skimage.morphology import convex_hull_image

from blastscan.errors import BlastscanError

__all__ = ["CellContext", "segment", "build_context", "mask_quality", "BACKGROUND_MAX", "MIN_CELL_AREA",
           "MAX_BORDER_FRACTION", "MIN_NUCLEUS_FRACTION", "NUCLEUS_ERODE", "QUALITY_LIMITS", "config"]

#: A pixel whose brightest channel is at most this is background (the black surround holds 0 and a
#: few anti-aliasing values below 10 at the cell's edge).
BACKGROUND_MAX = 10
#: Cells smaller than this (px^2) are debris or a failed crop; real cells cover 10,000-40,000 px^2.
MIN_CELL_AREA = 1500
#: Share of the cell's outline allowed on the image frame before the cell counts as cut off.
MAX_BORDER_FRACTION = 0.05
#: A nucleus smaller than this share of the cell is a failed segmentation.
MIN_NUCLEUS_FRACTION = 0.05
#: Smoothing (px) of the saturation before the nucleus threshold, so chromatin does not split the nucleus.
NUCLEUS_SMOOTH_SIGMA = 2.0
#: Saturation (0-255 scale) must vary by at least this across the cell (5th-95th percentile) for a nucleus
#: to be told from cytoplasm; real cells span 40-120. (Not in :func:`config`: it only turns a uniform,
#: nucleus-less image into a failure and changes no value computed on a real cell.)
MIN_SATURATION_SPREAD = 4.0
#: Radius (px) of the disc used to clean the nucleus mask.
NUCLEUS_CLEAN_RADIUS = 3
#: Erosion (px) of the nucleus for chromatin texture: the outline's blur and mask errors stay out.
NUCLEUS_ERODE = 3
#: Margin (px) kept around the cell's bounding box: outlines and filters see background around it.
MARGIN = 2
#: A mask outside these limits is flagged (not dropped): N:C area ratio, nucleus solidity, and the share
#: of the thresholded nucleus pixels kept in the largest component (low: a fragmented nucleus).
QUALITY_LIMITS = {"nc_ratio": (0.45, 0.97), "nucleus_solidity": (0.88, 1.0), "nucleus_kept_share": (0.9, 1.0)}

_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R 709 luminance, as skimage.rgb2gray
# Lookup tables over the 256 values of a uint8 channel: a log per pixel becomes an index.
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
# skimage.color.separate_stains: log(max(I/255, 1e-6)) / log(1e-6), then the stain matrix, clipped at 0.
_HED_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)


def config() -> dict:
    """The segmentation settings that change every handcrafted family's output (part of their identity)."""
    return {
        "nucleus_method": "hsv_saturation_otsu",
        "background_max": BACKGROUND_MAX,
        "min_cell_area": MIN_CELL_AREA,
        "max_border_fraction": MAX_BORDER_FRACTION,
        "min_nucleus_fraction": MIN_NUCLEUS_FRACTION,
        "nucleus_smooth_sigma": NUCLEUS_SMOOTH_SIGMA,
        "nucleus_clean_radius": NUCLEUS_CLEAN_RADIUS,
        "nucleus_erode": NUCLEUS_ERODE,
    }


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _disc_rects(radius: int) -> list[tuple[int, int]]:
    """A digital disc (r² + c² <= radius²) as a union of centred rectangles (height, width), none inside another."""
    rects = [(2 * k + 1, 2 * int(np.sqrt(radius * radius - k * k)) + 1) for k in range(radius + 1)]
    return [a for a in rects if not any(b != a and b[0] >= a[0] and b[1] >= a[1] for b in rects)]


def _rect_filter(mask: np.ndarray, rect: tuple[int, int], fn) -> np.ndarray:
    out = mask.view(np.uint8)
    for axis, size in enumerate(rect):
        if size > 1:
            out = fn(out, size, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def erode_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a disc, outside the array counting as background; equal to
    ``ndi.binary_erosion(mask, disc)`` but 3x faster: erosion by a union of rectangles is the intersection
    of the (separable) erosions by each."""
    out = np.ones(mask.shape, bool)
    for rect in _disc_rects(radius):
        out &= _rect_filter(mask, rect, ndi.minimum_filter1d)
    return out


def dilate_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disc (the union of the separable dilations by its rectangles)."""
    out = np.zeros(mask.shape, bool)
    for rect in _disc_rects(radius):
        out |= _rect_filter(mask, rect, ndi.maximum_filter1d)
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (4-connected background) by labelling: background components that do not
    touch the frame are holes."""
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    frame = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outer = np.zeros(n + 1, bool)
    outer[frame] = True
    outer[0] = False  # label 0 is the mask itself
    return ~outer[labels]


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask if n else np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of 8-bit-range ``values`` (256-bin histogram, as skimage.filters.threshold_otsu)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m / w0 - (m[-1] - m) / w1) ** 2
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between)) + 0.5  # pixels <= argmax are the low class


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of an RGB uint8 image, float32 in 0-1 (0 where max = 0)."""
    mx = rgb.max(axis=2).astype(np.float32)
    mn = rgb.min(axis=2).astype(np.float32)
    return (mx - mn) / np.maximum(mx, 1.0)


def _crop_cell(image: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BlastscanError("segmentation", f"expected an RGB uint8 image, got {image.dtype} {image.shape}")
    fg = np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2]) > BACKGROUND_MAX  # 25x faster than max(axis=2)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        raise BlastscanError("segmentation", "no cell: the image is black")
    H, W = fg.shape
    r0, r1 = max(rows[0] - MARGIN, 0), min(rows[-1] + MARGIN + 1, H)
    c0, c1 = max(cols[0] - MARGIN, 0), min(cols[-1] + MARGIN + 1, W)
    crop = (slice(r0, r1), slice(c0, c1))
    cell = fill_holes(_largest(fg[crop]))
    area = int(cell.sum())
    if area < MIN_CELL_AREA:
        raise BlastscanError("segmentation", f"cell too small ({area} px^2 < {MIN_CELL_AREA}): debris or empty image")
    # Pixels of the cell on the image frame, against the outline length of a disc of the same area.
    on_frame = sum(int(cell[i, :].sum()) for i in (0, -1) if (r0, r1)[i] in (0, H)) + \
        sum(int(cell[:, j].sum()) for j in (0, -1) if (c0, c1)[j] in (0, W))
    frame_share = on_frame / (2.0 * np.sqrt(np.pi * area))
    if frame_share > MAX_BORDER_FRACTION:
        raise BlastscanError("segmentation", f"cell cut by the image border ({frame_share:.0%} of its outline)")
    return crop, cell


def _segment(image: np.ndarray):
    crop, cell = _crop_cell(image)
    area = int(cell.sum())
    # Normalised convolution: smoothing must not pull the cell's rim towards the black background.
    cellf = cell.astype(np.float32)
    weight = ndi.gaussian_filter(cellf, NUCLEUS_SMOOTH_SIGMA)
    sat = ndi.gaussian_filter(saturation(image[crop]) * (255.0 * cellf), NUCLEUS_SMOOTH_SIGMA)
    sat /= np.maximum(weight, 1e-6)
    inside = sat[cell]
    lo, hi = np.percentile(inside, (5, 95))
    if hi - lo < MIN_SATURATION_SPREAD:
        raise BlastscanError("segmentation", f"no plausible nucleus (uniform saturation across the cell, "
                                             f"5-95% range {hi - lo:.1f} / 255)")
    candidate = (sat > _otsu(inside)) & cell
    r = NUCLEUS_CLEAN_RADIUS
    cleaned = erode_disc(dilate_disc(candidate, r), r)  # closing
    cleaned = dilate_disc(erode_disc(fill_holes(cleaned), r), r) & cell  # holes filled, then opening
    nucleus = _largest(cleaned)
    n_area = int(nucleus.sum())
    if n_area < MIN_NUCLEUS_FRACTION * area:
        raise BlastscanError("segmentation", f"no plausible nucleus ({n_area} px^2 in a {area} px^2 cell)")
    kept = n_area / max(int(cleaned.sum()), 1)
    return crop, cell, nucleus, kept


def segment(image: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Find the cell and its nucleus.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8
        One cell on a black background.

    Returns
    -------
    crop : (slice, slice)
        The cell's bounding box plus a margin, in image coordinates.
    cell, nucleus : ndarray (h, w) bool
        Masks on the crop.

    Raises
    ------
    BlastscanError
        ``("segmentation", reason)`` when there is no cell, it is tiny, cut by the image frame, or the
        nucleus cannot be found.
    """
    crop, cell, nucleus, _ = _segment(image)
    return crop, cell, nucleus


class CellContext:
    """What every handcrafted family reads, computed once per image and shared by all families.

    Attributes
    ----------
    rgb : ndarray (h, w, 3) uint8
        The cell's bounding-box crop (a view of the input image, with a small margin).
    cell, nucleus, cytoplasm : ndarray (h, w) bool
        Region masks on the crop; ``cytoplasm = cell & ~nucleus`` (often a thin rim: lymphoid cells are
        mostly nucleus).
    nucleus_inner : ndarray (h, w) bool
        The nucleus eroded by :data:`NUCLEUS_ERODE` px (the nucleus itself when erosion would empty it):
        chromatin texture is measured here, away from the outline.
    grey : ndarray (h, w) float32
        Luminance (ITU-R 709), 0-255, not rounded.
    nucleus_kept_share : float
        Share of the thresholded nucleus pixels kept in its largest component.

    Derived images (optical density, stain channels) are computed on first use and then shared.
    """

    def __init__(self, rgb, cell, nucleus, nucleus_kept_share=1.0):
        self.rgb, self.cell, self.nucleus = rgb, cell, nucleus
        self.cytoplasm = cell & ~nucleus
        self.nucleus_kept_share = float(nucleus_kept_share)
        self.grey = rgb @ _GREY_WEIGHTS
        inner = erode_disc(nucleus, NUCLEUS_ERODE)
        self.nucleus_inner = inner if inner.sum() >= 50 else nucleus

    def memo(self, key: str, compute):
        """``compute(self)``, computed once per cell under ``key``: families that build on another's values
        (``size`` on ``shape``) share them instead of measuring twice."""
        cache = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            cache[key] = compute(self)
        return cache[key]

    def nucleus_box(self, margin: int) -> tuple[slice, slice]:
        """The nucleus's bounding box on the crop plus ``margin`` px (clipped): local filters run there only."""
        rows, cols = np.flatnonzero(self.nucleus.any(axis=1)), np.flatnonzero(self.nucleus.any(axis=0))
        h, w = self.nucleus.shape
        return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
                slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)))

    @cached_property
    def hed(self) -> np.ndarray:
        """Haematoxylin, eosin, DAB densities of the crop, (h, w, 3) float32: ``skimage.color.rgb2hed``'s
        colour deconvolution, computed through a lookup table (equal to it to float32 precision)."""
        stains = _HED_LUT[self.rgb] @ hed_from_rgb.astype(np.float32)
        return np.maximum(stains, 0, out=stains)

    @cached_property
    def od(self) -> np.ndarray:
        """Optical density per RGB channel, ``-log10((I + 1) / 256)``, (h, w, 3) float32 (0 = no absorption)."""
        return _OD_LUT[self.rgb]


def build_context(image: np.ndarray) -> CellContext:
    """Segment ``image`` once and wrap what the families share (see :class:`CellContext`)."""
    image = np.asarray(image)
    crop, cell, nucleus, kept = _segment(image)
    return CellContext(image[crop], cell, nucleus, kept)


def mask_quality(ctx: CellContext) -> tuple[dict[str, float], list[str]]:
    """Plausibility of the masks: values and the list of reasons a mask looks wrong (empty: looks right).

    Values: ``nc_ratio`` (nucleus / cell area), ``nucleus_solidity`` (nucleus area / its convex hull's
    area, pixel-counted), ``nucleus_kept_share``; limits: :data:`QUALITY_LIMITS`.
    """
    ys, xs = np.nonzero(ctx.nucleus)
    box = ctx.nucleus[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    values = {
        "nc_ratio": float(ctx.nucleus.sum() / ctx.cell.sum()),
        "nucleus_solidity": float(box.sum() / max(convex_hull_image(box).sum(), 1)),
        "nucleus_kept_share": ctx.nucleus_kept_share,
    }
    reasons = [f"{k} {v:.2f} outside {lo:g}-{hi:g}" for k, v in values.items()
               for lo, hi in [QUALITY_LIMITS[k]] if not lo <= v <= hi]
    return values, reasons
