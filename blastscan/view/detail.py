"""What the web page shows beside a cell: the cell with its segmentation outline, and the detail of one cell
against the training reference its bundle carries (:mod:`blastscan.bundle.reference`: per-class percentiles
and permutation importance of the handcrafted features, reference cells as thumbnails)."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from blastscan.bundle import Bundle
from blastscan.bundle.reference import square_around
from blastscan.dataset import load_image
from blastscan.errors import BlastscanError
from blastscan.features.handcrafted import feature_dictionary
from blastscan.features.segmentation import segment
from blastscan.report.masks import CELL_RGB, NUCLEUS_RGB

__all__ = ["TOP_FEATURES", "N_NEIGHBOURS", "outline_png", "cell_detail", "data_url"]

TOP_FEATURES = 8
N_NEIGHBOURS = 5


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def outline_png(path: str | os.PathLike) -> tuple[bytes | None, str]:
    """The cell with the segmentation's cell (yellow) and nucleus (cyan) outlines, cropped to it, as PNG;
    and a note (empty, or why no outline could be drawn). ``None`` when the image cannot be read."""
    try:
        img = load_image(path)
    except BlastscanError:
        return None, "the image could not be read"
    note = ""
    try:
        crop, cell, nucleus = segment(img)
        img = img.copy()
        for mask, colour in ((cell, CELL_RGB), (nucleus, NUCLEUS_RGB)):  # the contact sheets' colours
            edge = mask & ~ndi.binary_erosion(mask, border_value=0)
            edge = ndi.binary_dilation(edge)
            region = img[crop]
            region[edge] = colour
        img = img[square_around(crop, img.shape[:2])]  # the cell fills the picture
    except BlastscanError as exc:
        note = f"no outline: {exc.why or exc}"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue(), note


def cell_detail(bundle: Bundle, vector: np.ndarray | None, *, top: int = TOP_FEATURES,
                k: int = N_NEIGHBOURS, sha256: str = "") -> dict:
    """The most important handcrafted features of ``vector`` with the cell's place in the training
    distribution, and its nearest training cells, from ``bundle.extras["view"]`` (empty parts when the
    bundle does not carry them or the cell has no features)."""
    ref = bundle.extras.get("view") or {}
    out: dict[str, Any] = {"features": [], "neighbours": []}
    if vector is None:
        return out
    hand = ref.get("handcrafted")
    if hand:
        info = {f.name: f for f in feature_dictionary()}
        order = np.argsort(-np.asarray(hand["importance"]), kind="stable")[:top]
        grid = np.asarray(hand["percentiles"])
        for r in order:
            name, col = hand["names"][r], hand["columns"][r]
            value = float(vector[col])
            entry = {"name": name, "value": value, "importance": float(hand["importance"][r]),
                     "definition": info[name].definition if name in info else "",
                     "unit": info[name].unit if name in info else "", "classes": {}}
            for cls, q in hand["quantiles"].items():
                qs = np.asarray(q)[:, r].astype(float)
                entry["classes"][cls] = {"percentile": float(np.interp(value, qs, grid)) if qs[-1] > qs[0]
                                         else (50.0 if value == qs[0] else (0.0 if value < qs[0] else 100.0)),
                                         "q": {str(int(p)): float(v) for p, v in zip(grid, qs) if p in (5, 25, 50, 75, 95)}}
            out["features"].append(entry)
        out["importance_rule"] = hand.get("importance_rule", "")
    cells = ref.get("reference")
    if cells and len(cells["labels"]):
        z = (np.asarray(vector, dtype=np.float64) - cells["mean"]) / cells["scale"]
        d = np.sqrt(((np.asarray(cells["vectors"], dtype=np.float64) - z) ** 2).sum(axis=1))
        for i in np.argsort(d, kind="stable")[:k]:
            out["neighbours"].append({"label": cells["labels"][i], "subject": cells["subjects"][i],
                                      "distance": float(d[i]),
                                      "same_image": bool(sha256) and cells.get("sha256", [""] * len(d))[i] == sha256,
                                      "image": data_url(cells["thumbnails"][i], "image/jpeg")})
        out["neighbour_rule"] = f"{cells['distance']}; among {len(cells['labels'])} training cells kept in the bundle"
    return out
