"""Texture family: chromatin texture inside the eroded nucleus: GLCM (Haralick), uniform LBP, multi-scale LoG.

Region: ``nucleus_inner``, the nucleus eroded by ``segmentation.NUCLEUS_ERODE`` px, so the nucleus outline
(and the cytoplasm or background behind it) never counts as texture.

* GLCM: the inner nucleus's grey (luminance) is quantised to :data:`GREY_LEVELS` equal bins spanning
  its own 1st-99th percentile range (values outside are clipped; the stretch makes the texture
  independent of the stain's strength, absolute intensity is not texture). Co-occurrences are counted
  for explicit offsets per direction, ``(0, d), (d, d), (d, 0), (d, -d)`` (row, column), as mahotas
  does (chessboard distance ``d``; skimage's ``graycomatrix`` would round ``d = 2`` at 45° to ``(1, 1)``,
  the pixels of ``d = 1``). Both pixels of a pair must lie in the region; the matrix is symmetric.
* LBP: uniform local binary patterns on the unrounded (float) grey, histogram over the region.
* LoG: scale-normalised Laplacian of Gaussian ``σ²·∇²G_σ`` (σ in original pixels) of the grey divided
  by the region's median grey (unitless, so a darker stain does not scale it). Scales above
  :data:`LOG_BASE_SIGMA` run on a ``f``-times block-averaged image with ``σ/f``, normalised by
  ``(σ/f)²`` (the Laplacian in coarse pixels is ``f²`` times that in original pixels).

Version 2 (was ``texture_cell_*`` in ``handcrafted@1``): region, offsets, LBP input and LoG scale fixed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from blastscan.errors import BlastscanError
from blastscan.features.base import FeatureInfo
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import CellContext

__all__ = ["TextureExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "compute", "config", "glcm_properties",
           "quantise", "glcm_offsets", "log_energy", "uniform_lbp", "GLCM_DISTANCES", "GREY_LEVELS", "LBP_POINTS", "LBP_RADIUS",
           "LOG_SIGMAS"]

FAMILY = "texture"
VERSION = "2"
REGION = "nucleus_inner"
GREY_LEVELS = 32
QUANTISE_PERCENTILES = (1.0, 99.0)
GLCM_DISTANCES = (1, 2, 4)
#: Unit steps of the four directions (row, column), as mahotas.features.haralick: 0°, 45°, 90°, 135°.
GLCM_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))
LBP_POINTS, LBP_RADIUS = 8, 1
LOG_SIGMAS = (1.0, 2.0, 4.0, 8.0)
#: Scales above this run on a 2x / 4x block-averaged image with σ divided accordingly.
LOG_BASE_SIGMA = 2.0

_GLCM_PROPS = [
    ("contrast", "Σ p(i,j)·(i-j)²", "levels²"),
    ("dissimilarity", "Σ p(i,j)·|i-j|", "levels"),
    ("homogeneity", "Σ p(i,j) / (1 + (i-j)²) (inverse difference moment)", "1"),
    ("asm", "angular second moment Σ p(i,j)²", "1"),
    ("energy", "sqrt(ASM)", "1"),
    ("correlation", "Σ (i-μi)(j-μj)·p(i,j) / (σi·σj); 1 when σi·σj = 0 (constant region)", "1"),
    ("entropy", "-Σ p(i,j)·log2 p(i,j)", "bits"),
    ("max_probability", "max p(i,j)", "1"),
]
_LBP_BINS = LBP_POINTS + 2  # uniform patterns 0..P plus one bin for all non-uniform ones


def _glcm_features() -> list[FeatureInfo]:
    out = []
    for d in GLCM_DISTANCES:
        for prop, formula, unit in _GLCM_PROPS:
            for agg, how in (("mean", "mean over the 4 directions"), ("range", "max - min over the 4 directions")):
                out.append(FeatureInfo(
                    f"{FAMILY}_nucleus_glcm_{prop}_d{d}_{agg}", FAMILY,
                    f"GLCM {prop} ({formula}); offsets (0,{d}), ({d},{d}), ({d},0), ({d},-{d}); {GREY_LEVELS} levels "
                    f"over the region's 1st-99th percentile grey; symmetric; {how}", unit, REGION))
    return out


FEATURES: list[FeatureInfo] = _glcm_features() + [
    FeatureInfo(f"{FAMILY}_nucleus_lbp_u{k}" if k <= LBP_POINTS else f"{FAMILY}_nucleus_lbp_nonuniform", FAMILY,
                (f"share of region pixels whose uniform LBP (P={LBP_POINTS}, R={LBP_RADIUS}, float grey) has {k} "
                 "neighbours brighter or equal" if k <= LBP_POINTS else
                 f"share of region pixels with a non-uniform LBP pattern (P={LBP_POINTS}, R={LBP_RADIUS}, float grey)"),
                "1", REGION)
    for k in range(_LBP_BINS)
] + [
    FeatureInfo(f"{FAMILY}_nucleus_log_{stat}_s{s:g}", FAMILY,
                f"{desc} of σ²·∇²G_σ (σ = {s:g} px) of grey / median region grey", "1", REGION)
    for s in LOG_SIGMAS for stat, desc in (("mean_abs", "mean absolute value"), ("std", "standard deviation"))
]
FEATURE_NAMES = [f.name for f in FEATURES]


def config() -> dict:
    """Settings of this family that change its output."""
    return {"grey_levels": GREY_LEVELS, "quantise_percentiles": list(QUANTISE_PERCENTILES),
            "glcm_distances": list(GLCM_DISTANCES), "glcm_directions": [list(d) for d in GLCM_DIRECTIONS],
            "lbp": [LBP_POINTS, LBP_RADIUS, "float"], "log_sigmas": list(LOG_SIGMAS), "log_base_sigma": LOG_BASE_SIGMA}


def quantise(grey: np.ndarray, mask: np.ndarray, n_levels: int = GREY_LEVELS) -> np.ndarray:
    """Grey quantised to ``1..n_levels`` inside ``mask`` (equal bins over its 1st-99th percentile range), 0 outside."""
    inside = grey[mask]
    lo, hi = np.percentile(inside, QUANTISE_PERCENTILES)
    scaled = (inside - lo) * (n_levels / max(float(hi - lo), 1e-6))
    levels = np.zeros(mask.shape, np.uint8)
    levels[mask] = 1 + np.clip(scaled, 0, n_levels - 1).astype(np.uint8)
    return levels


def glcm_offsets(distances=GLCM_DISTANCES) -> list[list[tuple[int, int]]]:
    """Per distance, the (row, column) offsets of the four directions."""
    return [[(d * dr, d * dc) for dr, dc in GLCM_DIRECTIONS] for d in distances]


def _pairs(levels: np.ndarray, dr: int, dc: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = levels.shape
    a = levels[max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)]  # pixel x, and x + (dr, dc):
    b = levels[max(0, dr):h + min(0, dr), max(0, dc):w + min(0, dc)]
    keep = (a > 0) & (b > 0)
    return a[keep], b[keep]


def glcm_properties(levels: np.ndarray, n_levels: int, distances=GLCM_DISTANCES) -> dict:
    """GLCM properties of a quantised image where 0 marks pixels to ignore.

    Parameters
    ----------
    levels : ndarray (h, w) uint8
        Grey levels ``1..n_levels`` inside the region, 0 outside.
    n_levels : int
    distances : sequence of int
        Chessboard distances; each is counted along :data:`GLCM_DIRECTIONS` with offset ``d·step``.

    Returns
    -------
    dict
        Property name -> ndarray (n_distances, 4 directions).
    """
    L = n_levels
    P = np.zeros((L, L, len(distances), len(GLCM_DIRECTIONS)))
    for k, offsets in enumerate(glcm_offsets(distances)):
        for a_dir, (dr, dc) in enumerate(offsets):
            a, b = _pairs(levels, dr, dc)
            m = np.bincount((a.astype(np.int64) - 1) * L + (b - 1), minlength=L * L).reshape(L, L)
            P[:, :, k, a_dir] = m + m.T  # symmetric
    total = P.sum(axis=(0, 1))
    if (total == 0).any():
        raise BlastscanError("segmentation", "region too thin for co-occurrence statistics")
    P /= total
    i = np.arange(1, L + 1, dtype=np.float64)[:, None, None, None]
    j = i.transpose(1, 0, 2, 3)
    diff = i - j
    mu_i, mu_j = (P * i).sum((0, 1)), (P * j).sum((0, 1))
    sd_i = np.sqrt((P * (i - mu_i) ** 2).sum((0, 1)))
    sd_j = np.sqrt((P * (j - mu_j) ** 2).sum((0, 1)))
    cov = (P * (i - mu_i) * (j - mu_j)).sum((0, 1))
    denom = sd_i * sd_j
    asm = (P ** 2).sum((0, 1))
    logp = np.log2(np.where(P > 0, P, 1.0))
    return {
        "contrast": (P * diff ** 2).sum((0, 1)),
        "dissimilarity": (P * np.abs(diff)).sum((0, 1)),
        "homogeneity": (P / (1.0 + diff ** 2)).sum((0, 1)),
        "asm": asm,
        "energy": np.sqrt(asm),
        "correlation": np.where(denom > 1e-12, cov / np.where(denom > 1e-12, denom, 1.0), 1.0),
        "entropy": -(P * logp).sum((0, 1)),
        "max_probability": P.max((0, 1)),
    }


def uniform_lbp(img: np.ndarray, points: int = LBP_POINTS, radius: float = LBP_RADIUS) -> np.ndarray:
    """Rotation-invariant uniform LBP codes (``0..P`` uniform, ``P + 1`` otherwise) of a float image.

    The same definition as ``skimage.feature.local_binary_pattern(img, P, R, "uniform")``: neighbour ``p``
    at ``(-R sin(2πp/P), R cos(2πp/P))``, bilinearly interpolated, counts when ``>=`` the centre; 0 is
    used outside the image. Vectorised (skimage loops per pixel: 5x slower on float input).
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(img, pad, mode="constant")
    bits = []
    for p in range(points):
        rr = round(-radius * np.sin(2 * np.pi * p / points), 5)
        cc = round(radius * np.cos(2 * np.pi * p / points), 5)
        r0, c0 = int(np.floor(rr)), int(np.floor(cc))
        fr, fc = rr - r0, cc - c0

        def at(dr, dc):
            return padded[pad + dr:pad + dr + h, pad + dc:pad + dc + w]

        v = at(r0, c0) * (1 - fr) * (1 - fc)
        if fc:
            v = v + at(r0, c0 + 1) * (1 - fr) * fc
        if fr:
            v = v + at(r0 + 1, c0) * fr * (1 - fc)
        if fr and fc:
            v = v + at(r0 + 1, c0 + 1) * fr * fc
        bits.append(v >= img)
    ones = np.sum(bits, axis=0, dtype=np.uint8)
    changes = np.sum([a != b for a, b in zip(bits, bits[1:] + bits[:1])], axis=0, dtype=np.uint8)
    return np.where(changes <= 2, ones, np.uint8(points + 1))


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)


def log_energy(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``σ²·∇²G_σ * img`` at the pixels of ``mask`` (σ in pixels of ``img``), via a pyramid for large σ.

    Values are given at the mask's pixels on the image the filter ran on (block-averaged for large σ).
    """
    f = int(max(1, sigma // LOG_BASE_SIGMA))
    if f > 1:
        img, mask = _block_mean(img, f), _block_mean(mask, f) > 0.5
    if not mask.any():
        raise BlastscanError("segmentation", f"nucleus too small for the LoG scale σ = {sigma:g}")
    s = sigma / f
    return ndi.gaussian_laplace(img, s)[mask] * (s * s)


def compute(ctx: CellContext) -> dict[str, float]:
    """Texture features of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    region = ctx.nucleus_inner
    values: list[float] = []
    props = glcm_properties(quantise(ctx.grey, region), GREY_LEVELS)
    for k in range(len(GLCM_DISTANCES)):
        for prop, _, _ in _GLCM_PROPS:
            v = props[prop][k]
            values += [float(v.mean()), float(v.max() - v.min())]
    median = max(float(np.median(ctx.grey[region])), 1.0)
    # Outside the cell, the cell's mean grey: the black surround must not ring into the nucleus.
    filled = np.where(ctx.cell, ctx.grey, np.float32(ctx.grey[ctx.cell].mean())) / np.float32(median)
    box = ctx.nucleus_box(LBP_RADIUS + 1)
    lbp = uniform_lbp(filled[box])
    hist = np.bincount(lbp[region[box]].astype(np.int64), minlength=_LBP_BINS)[:_LBP_BINS]
    values += (hist / hist.sum()).tolist()
    for s in LOG_SIGMAS:
        r = log_energy(filled, region, s)
        values += [float(np.abs(r).mean()), float(r.std())]
    return dict(zip(FEATURE_NAMES, values, strict=True))


@register_family
class TextureExtractor(FamilyExtractor):
    """The ``texture`` family as an extractor (in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 30, True

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
