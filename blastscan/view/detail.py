"""What the web page shows beside a cell: the training reference a bundle carries (per-class percentiles and
permutation importance of the handcrafted features, reference cells as thumbnails), the cell with its
segmentation outline, and the detail of one cell against that reference."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
import pandas as pd

from blastscan.bundle import Bundle, p_all
from blastscan.dataset import load_image
from blastscan.errors import BlastscanError
from blastscan.features.handcrafted import feature_dictionary
from blastscan.features.segmentation import segment
from blastscan.report.masks import CELL_RGB, NUCLEUS_RGB

__all__ = ["REFERENCE_VERSION", "PERCENTILES", "TOP_FEATURES", "N_NEIGHBOURS", "training_reference", "outline_png",
           "cell_detail", "data_url"]

REFERENCE_VERSION = 1
PERCENTILES = np.arange(0, 101, 5, dtype=float)  # the training distribution is kept as these percentiles
TOP_FEATURES = 8
N_NEIGHBOURS = 5


def training_reference(model, X: np.ndarray, rows: pd.DataFrame, feature_names: list[str], *,
                       seed: int = 0, max_cells: int = 240, max_rows: int = 600, thumb_px: int = 96) -> dict:
    """Training statistics the page shows beside a cell; stored as ``bundle.extras["view"]``.

    Parameters
    ----------
    model : fitted estimator
        The bundle's model (for permutation importances).
    X : ndarray (n, d)
        Training features, in the model's column order.
    rows : DataFrame
        The training rows behind ``X`` (``path``, ``label``, ``subject``).
    feature_names : list of str
    seed : int
    max_cells : int
        Training cells kept as thumbnails and feature vectors, for nearest-neighbour look-ups.
    max_rows : int
        Training rows the permutation importance is measured on.
    thumb_px : int
        Thumbnail size (JPEG).

    Returns
    -------
    dict
        ``handcrafted``: names, per-class percentiles (``PERCENTILES``) and permutation importance
        (mean absolute change of P(ALL) on training cells when the feature is shuffled) of the model's handcrafted
        columns; ``reference``: z-scored feature vectors, labels, subjects and thumbnails of up to
        ``max_cells`` training cells, spread over subjects and classes, with the mean and scale used.
    """
    X = np.asarray(X, dtype=np.float64)
    y = (rows["label"].astype(str).to_numpy() == "all").astype(int)
    known = {f.name for f in feature_dictionary()}
    hand = [i for i, n in enumerate(feature_names) if n in known]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"version": REFERENCE_VERSION, "n_training_cells": int(len(y))}

    if hand:
        quant = {c: np.percentile(X[y == v][:, hand], PERCENTILES, axis=0).astype(np.float32)
                 for c, v in (("all", 1), ("hem", 0)) if (y == v).any()}
        sample = rng.choice(len(y), size=min(max_rows, len(y)), replace=False)
        Xs = X[sample]
        importance = np.zeros(len(hand))
        step = max(1, 20000 // len(Xs))  # columns shuffled per predict call: few, large calls
        base = p_all(model, Xs)
        for start in range(0, len(hand), step):
            cols = hand[start:start + step]
            stacked = np.repeat(Xs[None], len(cols), axis=0)
            for k, j in enumerate(cols):
                stacked[k, :, j] = rng.permutation(Xs[:, j])
            p = p_all(model, stacked.reshape(-1, X.shape[1])).reshape(len(cols), len(Xs))
            importance[start:start + len(cols)] = np.abs(p - base).mean(axis=1)
        out["handcrafted"] = {"names": [feature_names[i] for i in hand], "columns": hand,
                              "percentiles": PERCENTILES.tolist(), "quantiles": quant,
                              "importance": importance.astype(np.float32),
                              "importance_rule": (f"mean change of P(ALL) when the feature is shuffled across "
                                                  f"{len(Xs)} training cells")}

    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    picked = _spread(rows, y, max_cells, rng)
    vectors, labels, subjects, thumbs, shas = [], [], [], [], []
    for i in picked:
        thumb = _thumbnail(rows["path"].iloc[i], thumb_px)
        if thumb is None:
            continue
        vectors.append(((X[i] - mean) / scale).astype(np.float32))
        labels.append("all" if y[i] else "hem")
        subjects.append(str(rows["subject"].iloc[i]) if "subject" in rows else "")
        thumbs.append(thumb)
        shas.append(str(rows["sha256"].iloc[i]) if "sha256" in rows else "")
    out["reference"] = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32),
                        "vectors": np.array(vectors, dtype=np.float32).reshape(len(vectors), X.shape[1]),
                        "labels": labels, "subjects": subjects, "thumbnails": thumbs, "sha256": shas,
                        "distance": "Euclidean distance on z-scored model features (training mean and SD)"}
    return out


def _spread(rows: pd.DataFrame, y: np.ndarray, n: int, rng) -> list[int]:
    """Up to ``n`` row indices, half per class, taken round-robin over subjects."""
    subjects = rows["subject"].astype(str).to_numpy() if "subject" in rows else np.array([""] * len(y))
    picked: list[int] = []
    for v in (1, 0):
        by_subject = {}
        for i in rng.permutation(np.flatnonzero(y == v)):
            by_subject.setdefault(subjects[i], []).append(int(i))
        queues = list(by_subject.values())
        want = n // 2 if v == 1 else n - len(picked)
        taken = 0
        while taken < want and any(queues):
            for q in queues:
                if q and taken < want:
                    picked.append(q.pop())
                    taken += 1
    return picked


def _thumbnail(path: str, px: int) -> bytes | None:
    from PIL import Image

    try:
        img = load_image(path)
    except BlastscanError:
        return None
    try:
        img = img[_square_around(segment(img)[0], img.shape[:2])]  # the cell, not the black around it
    except BlastscanError:
        pass
    im = Image.fromarray(img)
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# -- one cell, explained ------------------------------------------------------------------------------
def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def outline_png(path: str | os.PathLike) -> tuple[bytes | None, str]:
    """The cell with the segmentation's cell (yellow) and nucleus (cyan) outlines, cropped to it, as PNG;
    and a note (empty, or why no outline could be drawn). ``None`` when the image cannot be read."""
    from PIL import Image
    from scipy import ndimage as ndi

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
        img = img[_square_around(crop, img.shape[:2])]  # the cell fills the picture
    except BlastscanError as exc:
        note = f"no outline: {exc.why or exc}"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue(), note


def _square_around(crop: tuple[slice, slice], shape: tuple[int, int], margin: int = 16) -> tuple[slice, slice]:
    """A square window around ``crop`` plus ``margin``, kept inside the image."""
    (r, c), (H, W) = crop, shape
    side = min(max(r.stop - r.start, c.stop - c.start) + 2 * margin, H, W)
    r0 = int(np.clip((r.start + r.stop - side) // 2, 0, H - side))
    c0 = int(np.clip((c.start + c.stop - side) // 2, 0, W - side))
    return slice(r0, r0 + side), slice(c0, c0 + side)


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


# -- the server ---------------------------------------------------------------------------------------
