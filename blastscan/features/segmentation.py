"""Cell and nucleus masks, and the shared per-cell context every handcrafted family reads.

A C-NMC image is one segmented cell on a black background. The cell is the largest non-black
component (holes filled); the nucleus is the darker, haematoxylin-rich part of it: Otsu's threshold on
the smoothed red channel (haematoxylin absorbs red, so chromatin is dark in red while the pink
cytoplasm stays bright), cleaned by closing, hole filling and opening, largest component. Everything is
computed on the cell's bounding box (plus a margin), never on the whole 450 x 450 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from blastscan.errors import BlastscanError

__all__ = ["CellContext", "segment", "build_context", "GREY_LEVELS", "BACKGROUND_MAX",
           "MIN_CELL_AREA", "MAX_BORDER_FRACTION", "MIN_NUCLEUS_FRACTION"]

#: A pixel whose brightest channel is at most this is background (the black surround holds 0 and a
#: few anti-aliasing values below 10 at the cell's edge).
BACKGROUND_MAX = 10
#: Cells smaller than this (px^2) are debris or a failed crop; real cells cover 10,000-40,000 px^2.
MIN_CELL_AREA = 1500
#: Share of the cell's outline allowed on the image frame before the cell counts as cut off.
MAX_BORDER_FRACTION = 0.05
#: A nucleus smaller than this share of the cell is a failed segmentation.
MIN_NUCLEUS_FRACTION = 0.05
#: Grey levels of the quantised image used by the co-occurrence (GLCM) features.
GREY_LEVELS = 64
#: Grey range (percentiles of the cell's grey) mapped onto the GLCM levels; outside it values are clipped.
QUANTISE_PERCENTILES = (1.0, 99.0)
#: Smoothing (px) before the nucleus threshold, so chromatin texture does not split the nucleus.
NUCLEUS_SMOOTH_SIGMA = 2.0
#: Radius (px) of the disc used to clean the nucleus mask.
NUCLEUS_CLEAN_RADIUS = 3
#: Margin (px) kept around the cell's bounding box: outlines and filters see background around it.
MARGIN = 2

_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R 709 luminance, as skimage.rgb2gray


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


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
    return float(np.argmax(between)) + 0.5  # pixels <= argmax are the dark class


@dataclass(frozen=True)
class CellContext:
    """What every handcrafted family reads, computed once per image.

    Attributes
    ----------
    rgb : ndarray (h, w, 3) uint8
        The cell's bounding-box crop (a view of the input image, with a small margin).
    cell, nucleus, cytoplasm : ndarray (h, w) bool
        Region masks on the crop; ``cytoplasm = cell & ~nucleus`` (may be almost empty: many C-NMC
        cells are nearly all nucleus).
    grey : ndarray (h, w) float32
        Luminance, 0-255.
    levels : ndarray (h, w) uint8
        Grey quantised to ``1..n_levels`` inside the cell (equal bins over the cell's 1st-99th percentile
        grey range) and 0 outside (background marker for GLCMs).
    n_levels : int
    """

    rgb: np.ndarray
    cell: np.ndarray
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    grey: np.ndarray
    levels: np.ndarray
    n_levels: int


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
    cell = ndi.binary_fill_holes(_largest(fg[crop]))
    area = int(cell.sum())
    if area < MIN_CELL_AREA:
        raise BlastscanError("segmentation", f"cell too small ({area} px^2 < {MIN_CELL_AREA}): debris or empty image")
    # Pixels of the cell on the image frame, against the outline length of a disc of the same area.
    on_frame = sum(int(cell[i, :].sum()) for i in (0, -1) if (r0, r1)[i] in (0, H)) + \
        sum(int(cell[:, j].sum()) for j in (0, -1) if (c0, c1)[j] in (0, W))
    frame_share = on_frame / (2.0 * np.sqrt(np.pi * area))
    if frame_share > MAX_BORDER_FRACTION:
        raise BlastscanError("segmentation", f"cell cut by the image border ({frame_share:.0%} of its outline)")
    # Normalised convolution: smoothing must not pull the cell's rim towards the black background, or
    # the dark rim closes into a ring and hole filling turns the whole cell into "nucleus".
    weight = ndi.gaussian_filter(cell.astype(np.float32), NUCLEUS_SMOOTH_SIGMA)
    red = ndi.gaussian_filter(image[crop][..., 0] * cell.astype(np.float32), NUCLEUS_SMOOTH_SIGMA)
    red /= np.maximum(weight, 1e-6)
    dark = (red <= _otsu(red[cell])) & cell
    disc = _disc(NUCLEUS_CLEAN_RADIUS)
    nucleus = ndi.binary_closing(dark, disc, border_value=0)
    nucleus = ndi.binary_opening(ndi.binary_fill_holes(nucleus), disc) & cell
    nucleus = _largest(nucleus)
    n_area = int(nucleus.sum())
    if n_area < MIN_NUCLEUS_FRACTION * area:
        raise BlastscanError("segmentation", f"no plausible nucleus ({n_area} px^2 in a {area} px^2 cell)")
    return crop, cell, nucleus


def build_context(image: np.ndarray, n_levels: int = GREY_LEVELS) -> CellContext:
    """Segment ``image`` and precompute the grey and quantised images shared by all families."""
    crop, cell, nucleus = segment(image)
    rgb = image[crop]
    grey = rgb @ _GREY_WEIGHTS
    # Bins span the cell's own 1st-99th percentile grey range: cells are dark (grey ~20-110), so fixed
    # 0-255 bins would leave them a dozen levels. Absolute intensity is the colour family's job.
    inside = grey[cell]
    lo, hi = np.percentile(inside, QUANTISE_PERCENTILES)
    scaled = (inside - lo) * (n_levels / max(float(hi - lo), 1e-6))
    levels = np.zeros(cell.shape, np.uint8)
    levels[cell] = 1 + np.clip(scaled, 0, n_levels - 1).astype(np.uint8)
    return CellContext(rgb=rgb, cell=cell, nucleus=nucleus, cytoplasm=cell & ~nucleus, grey=grey,
                       levels=levels, n_levels=n_levels)
