"""What image goes into a frozen backbone, and over which views of it the embedding is averaged.

Two options of the deep extractors (:mod:`blastscan.features.deep`), each part of the extractor's config
and so of its store identity (tables never mix); the defaults leave the config, and so the identity of
tables computed before these options existed, unchanged:

``input`` (:data:`INPUTS`)
    ``rgb`` (default): the resized cell as it is. ``grey``: its luminance (ITU-R 709 weights, as
    ``skimage.color.rgb2gray``), rounded to uint8 and replicated to the 3 channels the network expects:
    the stain's colour, which differs between a subject's slides and the next subject's, is gone; shape,
    size and chromatin texture stay. ``od``: the haematoxylin density of ``skimage.color.rgb2hed`` (the
    nuclear stain), scaled by the fixed :data:`OD_MAX` to 0-255 and replicated; the black surround
    (brightest channel <= :data:`BACKGROUND_MAX`, as in the segmentation) stays 0. All conversions run on
    the resized uint8 image, on the prefetch thread, before any engine sees it.
``tta`` (:data:`TTAS`)
    ``1`` (default): one forward pass. ``4``: the mean of the pooled embeddings of the four 90-degree
    rotations. ``8``: of the eight symmetries of the square (the dihedral group: four rotations, each
    also mirrored). A cell on a slide has no orientation; with ``tta=8`` the embedding of a rotated or
    mirrored cell equals the cell's own up to float rounding. It costs 4 or 8 forward passes per cell.
``layer`` (the backbone's ``taps``)
    None (default): the global average pool of the last block. A tap such as InceptionV3's ``mixed7``:
    the network cut after that block, its output average-pooled (768 values for ``mixed7``); cheaper than
    the whole network. Join it to the last block's embedding with a union:
    ``inception_v3+inception_v3_mixed7``.

A user writes them in the feature-set name: ``<backbone>[_<input>][_<layer>][_tta<n>]``, e.g.
``inception_v3_grey``, ``inception_v3_grey_tta8``, ``inception_v3_mixed7``, ``vgg16_od_tta4``.
:func:`parse_variant` reads such a name (any order of the parts) and :func:`variant_name` writes the
canonical one; a misspelt part is a one-line error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.color import rgb2hed

from blastscan.errors import BlastscanError

__all__ = ["INPUTS", "TTAS", "OD_MAX", "BACKGROUND_MAX", "check_input", "check_tta", "to_input", "dihedral",
           "variant_name", "parse_variant", "OPTIONS_HELP"]

INPUTS = ("rgb", "grey", "od")
TTAS = (1, 4, 8)
#: Haematoxylin density (``rgb2hed``'s H) mapped to 255 in the ``od`` input (0 to 0); above it is clipped.
#: Inside 120 C-NMC dev cells resized to 299 px, H spans 0.07 (1st percentile) to 0.27 (99.9th), median 0.12.
OD_MAX = 0.30
#: A pixel whose brightest channel is at most this is the black surround (as in the segmentation).
BACKGROUND_MAX = 10
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R 709, as skimage.color.rgb2gray
OPTIONS_HELP = ("deep backbones take options in the name: <backbone>[_grey|_od][_<layer>][_tta4|_tta8], "
                "e.g. inception_v3_grey_tta8, inception_v3_mixed7")


def check_input(value: Any) -> str:
    """``value`` as one of :data:`INPUTS` (None: ``rgb``); anything else is a :class:`BlastscanError`."""
    value = "rgb" if value is None else str(value)
    if value not in INPUTS:
        raise BlastscanError("input", f"unknown input '{value}'; choose from: {', '.join(INPUTS)}")
    return value


def check_tta(value: Any) -> int:
    """``value`` as one of :data:`TTAS` (None: 1); anything else is a :class:`BlastscanError`."""
    if value is None:
        return 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n not in TTAS or str(value).strip() != str(n):
        raise BlastscanError("tta", f"'{value}' is not one of {', '.join(map(str, TTAS))}")
    return n


# -- the image -------------------------------------------------------------------------------------------
def to_input(image: np.ndarray, mode: str) -> np.ndarray:
    """The network's uint8 input ``(h, w, 3)`` for a resized RGB uint8 ``image`` under input ``mode``."""
    if mode == "rgb":
        return image
    rgb = np.asarray(image)
    if mode == "grey":
        grey = np.rint(rgb.astype(np.float32) @ _GREY_WEIGHTS)
    elif mode == "od":
        h = rgb2hed(rgb)[..., 0]
        grey = np.rint(np.clip(h / OD_MAX, 0.0, 1.0) * 255.0)
        grey[rgb.max(axis=-1) <= BACKGROUND_MAX] = 0  # black surround: no stain, not "infinitely dense"
    else:
        raise BlastscanError("input", f"unknown input '{mode}'; choose from: {', '.join(INPUTS)}")
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def dihedral(batch: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` (0-7) of the square applied to a batch ``(n, h, w, c)``: ``k % 4`` quarter turns,
    after a left-right mirror when ``k >= 4``. 0-3 are the rotations (``tta=4``), 0-7 the group (``tta=8``)."""
    if not 0 <= k < 8:
        raise ValueError(f"symmetry {k} is not in 0-7")
    x = batch[:, :, ::-1] if k >= 4 else batch
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(1, 2)))


# -- the name ------------------------------------------------------------------------------------------
def variant_name(backbone: str, input_mode: str = "rgb", tta: int = 1, layer: str | None = None) -> str:
    """The canonical feature-set name: ``inception_v3``, ``inception_v3_grey``, ``inception_v3_grey_mixed7_tta8``."""
    return (backbone + ("" if input_mode == "rgb" else f"_{input_mode}") + (f"_{layer}" if layer else "")
            + ("" if tta == 1 else f"_tta{tta}"))


def parse_variant(name: str, backbones) -> tuple[str, str, dict[str, Any]] | None:
    """Read ``<backbone>_<part>...`` into ``(canonical name, backbone, options)``; None when ``name`` does
    not start with one of ``backbones`` (a mapping of names to :class:`Backbone`) and ``_``.

    Parts: an input (``grey``, ``od``, ``rgb``), ``tta<n>`` (n in 4, 8, or 1) and one of the backbone's
    ``taps`` (``mixed7``), each at most once.

    Raises
    ------
    BlastscanError
        For a part that is neither (``inception_v3_gray``), or a part given twice.
    """
    base = max((b for b in backbones if name.startswith(b + "_")), key=len, default=None)
    if base is None:
        return None
    taps = [t for t, _ in getattr(backbones[base], "taps", ())]
    input_mode, tta, layer = None, None, None
    for part in name[len(base) + 1:].split("_"):
        is_tta = part.startswith("tta") and part[3:].isdigit() and int(part[3:]) in TTAS
        if part in INPUTS and input_mode is None:
            input_mode = part
        elif is_tta and tta is None:
            tta = int(part[3:])
        elif part in taps and layer is None:
            layer = part
        else:
            why = "repeated" if part in INPUTS or is_tta or part in taps else "unknown"
            layers = f", layers: {', '.join(taps)}" if taps else ""
            raise BlastscanError(f"feature set '{name}'",
                                 f"{why} option '{part}' of {base}; inputs: {', '.join(INPUTS)} (rgb is the "
                                 f"default), rotation/flip averaging: tta4, tta8{layers} (e.g. {base}_grey_tta8)")
    input_mode, tta = check_input(input_mode), check_tta(tta)
    options: dict[str, Any] = {}
    if input_mode != "rgb":
        options["input_mode"] = input_mode
    if tta != 1:
        options["tta"] = tta
    if layer:
        options["layer"] = layer
    return variant_name(base, input_mode, tta, layer), base, options
