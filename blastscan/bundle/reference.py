"""The training reference a bundle carries for the page (``blastscan view``), computed once at training:
per-class percentiles and permutation importance of the handcrafted features, and reference cells (their
z-scored feature vectors and JPEG thumbnails) for nearest-neighbour look-ups. Stored as
``bundle.extras["view"]``; :mod:`blastscan.view.detail` reads it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from blastscan.classifiers import predict_p_all
from blastscan.dataset import load_image
from blastscan.errors import BlastscanError
from blastscan.features.handcrafted import feature_dictionary
from blastscan.features.segmentation import segment

__all__ = ["REFERENCE_VERSION", "PERCENTILES", "training_reference", "square_around"]

REFERENCE_VERSION = 1
PERCENTILES = np.arange(0, 101, 5, dtype=float)  # the training distribution is kept as these percentiles


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
        base = predict_p_all(model, Xs)
        for start in range(0, len(hand), step):
            cols = hand[start:start + step]
            stacked = np.repeat(Xs[None], len(cols), axis=0)
            for k, j in enumerate(cols):
                stacked[k, :, j] = rng.permutation(Xs[:, j])
            p = predict_p_all(model, stacked.reshape(-1, X.shape[1])).reshape(len(cols), len(Xs))
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
    try:
        img = load_image(path)
    except BlastscanError:
        return None
    try:
        img = img[square_around(segment(img)[0], img.shape[:2])]  # the cell, not the black around it
    except BlastscanError:
        pass
    im = Image.fromarray(img)
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def square_around(crop: tuple[slice, slice], shape: tuple[int, int], margin: int = 16) -> tuple[slice, slice]:
    """A square window around ``crop`` plus ``margin``, kept inside the image."""
    (r, c), (H, W) = crop, shape
    side = min(max(r.stop - r.start, c.stop - c.start) + 2 * margin, H, W)
    r0 = int(np.clip((r.start + r.stop - side) // 2, 0, H - side))
    c0 = int(np.clip((c.start + c.stop - side) // 2, 0, W - side))
    return slice(r0, r0 + side), slice(c0, c0 + side)
