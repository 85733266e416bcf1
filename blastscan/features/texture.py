"""Texture family: GLCM (Haralick) properties, uniform LBP histogram and multi-scale LoG energies.

GLCMs use the context's quantised image (64 grey levels inside the cell, 0 outside): co-occurrences
with a background pixel are dropped (row and column 0), so the black surround and the cell's edge
against it never count as texture. Each property is computed per (distance, angle) at once, then
averaged over the 4 angles and reported with its range over angles. LBP and LoG see the grey image
with the background filled by the cell's mean grey, so the cell's outline is not an edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import graycomatrix, local_binary_pattern

from blastscan.errors import BlastscanError
from blastscan.features.base import FeatureInfo
from blastscan.features.segmentation import CellContext

__all__ = ["FAMILY", "FEATURES", "FEATURE_NAMES", "compute", "glcm_properties", "GLCM_DISTANCES", "LBP_POINTS",
           "LBP_RADIUS", "LOG_SIGMAS"]

FAMILY = "texture"
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
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
            for agg, how in (("mean", "mean over 4 angles"), ("range", "max - min over 4 angles")):
                out.append(FeatureInfo(f"{FAMILY}_cell_glcm_{prop}_d{d}_{agg}", FAMILY,
                                       f"GLCM {prop} ({formula}) at distance {d} px inside the cell, 64 grey "
                                       f"levels, symmetric, {how}", unit))
    return out


FEATURES: list[FeatureInfo] = _glcm_features() + [
    FeatureInfo(f"{FAMILY}_cell_lbp_u{k}" if k <= LBP_POINTS else f"{FAMILY}_cell_lbp_nonuniform", FAMILY,
                (f"share of cell pixels whose uniform LBP (P={LBP_POINTS}, R={LBP_RADIUS}) has {k} neighbours "
                 "brighter or equal" if k <= LBP_POINTS else
                 f"share of cell pixels with a non-uniform LBP pattern (P={LBP_POINTS}, R={LBP_RADIUS})"), "1")
    for k in range(_LBP_BINS)
] + [
    FeatureInfo(f"{FAMILY}_cell_log_{stat}_s{s:g}", FAMILY,
                f"{desc} of the scale-normalised Laplacian of Gaussian σ²·LoG (σ = {s:g} px) over the cell", "grey")
    for s in LOG_SIGMAS for stat, desc in (("mean_abs", "mean absolute value"), ("std", "standard deviation"))
]
FEATURE_NAMES = [f.name for f in FEATURES]


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)


def glcm_properties(levels: np.ndarray, n_levels: int, distances=GLCM_DISTANCES, angles=GLCM_ANGLES) -> dict:
    """GLCM properties of a quantised image where 0 marks pixels to ignore.

    Parameters
    ----------
    levels : ndarray (h, w) uint8
        Grey levels ``1..n_levels`` inside the region, 0 outside.
    n_levels : int

    Returns
    -------
    dict
        Property name -> ndarray (n_distances, n_angles).
    """
    glcm = graycomatrix(levels, distances, angles, levels=n_levels + 1, symmetric=True, normed=False)
    P = glcm[1:, 1:].astype(np.float64)  # drop every pair that involves the background
    total = P.sum(axis=(0, 1))
    if (total == 0).any():
        raise BlastscanError("segmentation", "region too thin for co-occurrence statistics")
    P /= total
    i = np.arange(1, n_levels + 1, dtype=np.float64)[:, None, None, None]
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


def compute(ctx: CellContext) -> dict[str, float]:
    """Texture features of ``ctx`` (names: :data:`FEATURE_NAMES`)."""
    values: list[float] = []
    props = glcm_properties(ctx.levels, ctx.n_levels)
    for k in range(len(GLCM_DISTANCES)):
        for prop, _, _ in _GLCM_PROPS:
            v = props[prop][k]
            values += [float(v.mean()), float(v.max() - v.min())]
    filled = np.where(ctx.cell, ctx.grey, np.float32(ctx.grey[ctx.cell].mean()))  # the one image copy
    lbp = local_binary_pattern(filled.astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform")
    hist = np.bincount(lbp[ctx.cell].astype(np.int64), minlength=_LBP_BINS)[:_LBP_BINS]
    values += (hist / hist.sum()).tolist()
    for s in LOG_SIGMAS:
        # Large scales run on a block-averaged image (a pyramid): same σ in original pixels, 4-16x cheaper.
        f = int(max(1, s // LOG_BASE_SIGMA))
        img, mask = (filled, ctx.cell) if f == 1 else (_block_mean(filled, f), _block_mean(ctx.cell, f) > 0.5)
        if not mask.any():
            raise BlastscanError("segmentation", "cell too small for the coarsest LoG scale")
        r = ndi.gaussian_laplace(img, s / f)[mask] * (s * s)
        values += [float(np.abs(r).mean()), float(r.std())]
    return dict(zip(FEATURE_NAMES, values, strict=True))
