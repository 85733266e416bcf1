"""Shape family: size, elongation, convexity, Feret diameters, Hu moments, outline irregularity and
indentations of the cell and of the nucleus.

Each region's outline is traced once (marching squares at the pixel-edge level 0.5); its polygon gives
the convex hull, Feret diameters, radial profile and indentation depths, and ``regionprops`` (computed
once per mask, only its cheap moment-based properties) gives area, axes, extent and Hu moments. Lengths
are in pixels.

Version 2 (was part of ``handcrafted@1``): the nucleus mask follows the nucleus outline (HSV saturation),
convexity compares two lengths of the same polygon (it was a polygon hull over a Crofton perimeter and
exceeded 1 on 20% of cells), and indentation features were added.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull
from skimage.measure import find_contours, regionprops

from blastscan.errors import BlastscanError
from blastscan.features.base import FeatureInfo
from blastscan.features.handcrafted import FamilyExtractor, register_family
from blastscan.features.segmentation import CellContext

__all__ = ["ShapeExtractor", "FAMILY", "VERSION", "FEATURES", "FEATURE_NAMES", "compute", "config", "HU_SCALE", "feret_diameters"]

FAMILY = "shape"
VERSION = "2"
#: An indentation counts when it is deeper than this share of the region's equivalent radius.
INDENT_MIN_DEPTH = 0.05
REGIONS = ("cell", "nucleus")
#: Hu moments span many orders of magnitude; they are reported as sign(h)·log10(1 + |h|·HU_SCALE).
HU_SCALE = 1e12

_PER_REGION = [
    ("area", "number of pixels in the region", "px^2"),
    ("perimeter", "outline length, Crofton estimate over 4 directions (unbiased for smooth outlines)", "px"),
    ("equivalent_diameter", "diameter of the disc with the same area, sqrt(4·area/π)", "px"),
    ("major_axis", "major axis of the ellipse with the same second moments", "px"),
    ("minor_axis", "minor axis of the ellipse with the same second moments", "px"),
    ("aspect_ratio", "major_axis / minor_axis (1 for a disc)", "1"),
    ("eccentricity", "eccentricity of the same-moments ellipse, sqrt(1 - minor²/major²) (0 for a disc)", "1"),
    ("circularity", "4π·area / perimeter² (1 for a disc, smaller for irregular outlines)", "1"),
    ("roundness", "4·area / (π·major_axis²) (1 for a disc, smaller for elongated shapes)", "1"),
    ("solidity", "outline polygon area / convex hull area (1 for a convex shape)", "1"),
    ("convexity", "convex hull perimeter / outline polygon perimeter, both of the traced outline (<= 1; "
                  "1 for a convex shape)", "1"),
    ("extent", "area / bounding-box area", "1"),
    ("feret_max", "largest caliper (Feret) diameter of the outline", "px"),
    ("feret_min", "smallest caliper (Feret) diameter of the outline", "px"),
    ("radial_irregularity", "std / mean of the distances from the centroid to the outline", "1"),
    ("radial_range", "(max - min) / mean of the distances from the centroid to the outline", "1"),
    ("indentation_max", "largest depth of the outline inside its convex hull (distance of an outline point "
                        "to the hull's boundary) / equivalent radius (0 for a convex shape)", "1"),
    ("indentation_mean", "mean over outline points of that depth / equivalent radius", "1"),
    ("indentation_count", f"number of indentations: runs of the outline deeper than {INDENT_MIN_DEPTH:g} x the "
                          "equivalent radius inside the hull (clefts, notches)", "count"),
] + [(f"hu{k}", f"Hu invariant moment {k}, as sign(h)·log10(1 + |h|·1e12)", "1") for k in range(1, 8)]

FEATURES: list[FeatureInfo] = [
    FeatureInfo(f"{FAMILY}_{region}_{q}", FAMILY, f"{region}: {d}", unit, region)
    for region in REGIONS for q, d, unit in _PER_REGION
] + [
    FeatureInfo(f"{FAMILY}_nc_ratio", FAMILY, "nucleus area / cell area", "1", "nucleus/cell"),
    FeatureInfo(f"{FAMILY}_nucleus_offset", FAMILY,
                "distance between nucleus and cell centroids / cell equivalent radius (0 = centred)", "1",
                "nucleus/cell"),
]
FEATURE_NAMES = [f.name for f in FEATURES]


def _outline(mask: np.ndarray) -> np.ndarray:
    """The longest closed outline (N, 2) of ``mask`` at the pixel edges (mask is padded: contours close)."""
    contours = find_contours(np.pad(mask, 1).astype(np.uint8), 0.5)
    if not contours:
        raise BlastscanError("segmentation", "region without an outline")
    return max(contours, key=len) - 1.0


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def feret_diameters(hull_points: np.ndarray) -> tuple[float, float]:
    """Max and min caliper widths of a convex polygon (rotating calipers over its edge directions)."""
    pts = hull_points
    diff = pts[:, None, :] - pts[None, :, :]
    fmax = float(np.sqrt((diff ** 2).sum(-1).max()))
    edges = np.roll(pts, -1, axis=0) - pts
    normals = np.stack([-edges[:, 1], edges[:, 0]], 1)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    proj = pts @ normals.T  # (n_points, n_edges): width across each edge direction
    fmin = float((proj.max(0) - proj.min(0)).min())
    return fmax, fmin


def _slog(h: np.ndarray) -> np.ndarray:
    return np.sign(h) * np.log10(1.0 + np.abs(h) * HU_SCALE)


def _region_features(mask: np.ndarray, out: dict, region: str) -> tuple[np.ndarray, float]:
    props = regionprops(mask.astype(np.uint8))[0]
    area = float(props.area)
    outline = _outline(mask)
    perimeter = float(props.perimeter_crofton)  # the traced polygon zigzags: +5% on a disc
    poly_perimeter = float(np.hypot(*(np.roll(outline, -1, axis=0) - outline).T).sum())
    hull = ConvexHull(outline)
    r_eq = np.sqrt(area / np.pi)
    # Depth of each outline point inside the hull: for a convex polygon, the smallest distance to a
    # facet line (equations are unit normals pointing out, so -(n.x + b) >= 0 inside).
    depth = np.clip((-(outline @ hull.equations[:, :2].T + hull.equations[:, 2])).min(axis=1), 0, None)
    deep = depth > INDENT_MIN_DEPTH * r_eq
    n_indent = int(np.count_nonzero(deep & ~np.roll(deep, 1)))  # runs on a closed outline
    if deep.all():
        n_indent = 1
    hull_pts = outline[hull.vertices]
    major, minor = float(props.axis_major_length), float(props.axis_minor_length)
    centroid = np.asarray(props.centroid)
    radial = np.hypot(*(outline - centroid).T)
    fmax, fmin = feret_diameters(hull_pts)
    values = {
        "area": area,
        "perimeter": perimeter,
        "equivalent_diameter": np.sqrt(4 * area / np.pi),
        "major_axis": major,
        "minor_axis": minor,
        "aspect_ratio": major / max(minor, 1.0),  # minor < 1 px only for a line: bounded, not inf
        "eccentricity": float(props.eccentricity),
        "circularity": 4 * np.pi * area / perimeter ** 2,
        "roundness": 4 * area / (np.pi * max(major, 1.0) ** 2),
        "solidity": _polygon_area(outline) / max(hull.volume, 1e-9),  # 2-D hull: volume is its area
        "convexity": hull.area / poly_perimeter,  # 2-D hull: .area is its perimeter
        "extent": float(props.extent),
        "feret_max": fmax,
        "feret_min": fmin,
        "radial_irregularity": radial.std() / radial.mean(),
        "radial_range": (radial.max() - radial.min()) / radial.mean(),
        "indentation_max": float(depth.max()) / r_eq,
        "indentation_mean": float(depth.mean()) / r_eq,
        "indentation_count": float(n_indent),
    }
    for k, h in enumerate(_slog(np.asarray(props.moments_hu)), 1):
        values[f"hu{k}"] = h
    out.update({f"{FAMILY}_{region}_{q}": v for q, v in values.items()})
    return centroid, area


def config() -> dict:
    """Settings of this family that change its output."""
    return {"hu_scale": HU_SCALE, "indent_min_depth": INDENT_MIN_DEPTH}


def compute(ctx: CellContext) -> dict[str, float]:
    """Shape features of the cell and the nucleus of ``ctx`` (names: :data:`FEATURE_NAMES`); measured once
    per cell, whichever family asks first."""
    return dict(ctx.memo(FAMILY, _measure))


def _measure(ctx: CellContext) -> dict[str, float]:
    out: dict[str, float] = {}
    c_cell, a_cell = _region_features(ctx.cell, out, "cell")
    c_nuc, a_nuc = _region_features(ctx.nucleus, out, "nucleus")
    out[f"{FAMILY}_nc_ratio"] = a_nuc / a_cell
    out[f"{FAMILY}_nucleus_offset"] = float(np.hypot(*(c_nuc - c_cell))) / np.sqrt(a_cell / np.pi)
    return out


@register_family
class ShapeExtractor(FamilyExtractor):
    """The ``shape`` family as an extractor (in ``handcrafted``; see this module)."""

    name, version, features = FAMILY, VERSION, FEATURES
    order, in_union = 10, True

    def measure(self, ctx: CellContext) -> dict[str, float]:
        return compute(ctx)

    def family_config(self) -> dict:
        return config()
