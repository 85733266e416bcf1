"""Reading and checking one image: the decoding policy (which modes are used, converted or refused),
:func:`load_image`, and the hash-and-check of each file with its cache.

Image modes (the same rules in the manifest check and in :func:`load_image`):

- accepted as is: 8-bit RGB;
- converted to RGB: palette images (``P``, e.g. 8-bit BMPs: the palette maps each pixel to an exact
  colour), RGBA/palette images whose alpha is fully opaque (the alpha is dropped), and 16-bit-per-channel
  RGB PNGs (Pillow reads them as 8-bit, keeping the high byte of each sample);
- refused (reported, left out of the manifest): grayscale of any depth (``L``, ``LA``, ``1``, ``I;16``,
  ``I``, ``F``) because colour and stain features need the three channels; images with transparent pixels
  (we do not guess a background); other colour spaces (CMYK, YCbCr, LAB, HSV); multi-frame files;
  unreadable, unidentified or truncated files (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays ``False``, so a
  cut-off file fails its full decode).

Limits, checked before anything is decoded: only regular files are opened (a FIFO, device or socket,
also behind a symlink, is refused without opening it, so a stray ``/dev/zero`` link or named pipe
cannot hang or exhaust a run); files over :data:`MAX_FILE_BYTES` (256 MiB) are refused; images over
:data:`MAX_PIXELS` (50 million pixels, read from the header) are refused before their pixels are decoded.
A single C-NMC cell is about 450 x 450 pixels; sizes far from that are flagged by ``score``
(:func:`odd_cell_size`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from blastscan._io import atomic_write_bytes
from blastscan.dataset.problems import Problem
from blastscan.errors import BlastscanError
from blastscan.parallel import map_threads

__all__ = ["IMAGE_EXTENSIONS", "INSPECT_CACHE", "MAX_FILE_BYTES", "MAX_PIXELS", "Inspection", "inspect_cache",
           "inspect_file", "inspect_files", "load_image", "load_pil_image", "odd_cell_size", "read_image_bytes",
           "DEFAULT_PIXEL_BUDGET", "PIXEL_BUDGET_ENV", "pixel_budget", "over_pixel_budget"]

MAX_FILE_BYTES = 256 << 20
MAX_PIXELS = 50_000_000  # the hard ceiling; the budget below is what is applied (and is lower by default)
# One small file (a 200 KB one-colour PNG of 7000 x 7000) would cost gigabytes and minutes to
# decode and segment. Every image is checked against this budget from its header, before it is decoded:
# 2000 x 2000, the top of CELL_SIDE_RANGE (a C-NMC cell is 0.2 MP). `score`/`view` --max-pixels or
# $BLASTSCAN_MAX_PIXELS (for every command, and inherited by worker processes) raise it.
DEFAULT_PIXEL_BUDGET = 4_000_000
PIXEL_BUDGET_ENV = "BLASTSCAN_MAX_PIXELS"
# a single-cell crop: C-NMC cells are 450 x 450; far outside this range is not what a model was trained on
CELL_SIDE_RANGE = (32, 2000)

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
INSPECT_CACHE = "inspected.json"  # file-check cache kept in a feature store folder


# -- decoding -------------------------------------------------------------------------------------------
class _Refused(Exception):
    """An image we will not use; the message is the one-line reason."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.kind = kind


_GRAY = {"L": "8-bit grayscale", "LA": "grayscale with alpha", "1": "black-and-white (1-bit)",
         "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale",
         "I;16N": "16-bit grayscale", "I": "32-bit integer grayscale", "F": "32-bit float grayscale"}


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`; :class:`_Refused` otherwise.

    The file is stat-ed (following links) before it is opened: FIFOs, devices and sockets are never
    opened, so they can neither block nor stream without end.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _Refused(f"cannot read ({exc.strerror or exc}) (left out)", "unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device" if
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a file")
        raise _Refused(f"not a regular file ({kind}); not opened (left out)", "unreadable")
    if st.st_size > MAX_FILE_BYTES:
        raise _Refused(f"file of {st.st_size / 2**20:,.0f} MiB, over the {MAX_FILE_BYTES >> 20} MiB limit for one "
                       "cell image (left out)", "unreadable")
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _Refused(f"cannot read ({exc.strerror or exc}) (left out)", "unreadable") from None


def _png_bit_depth(data: bytes) -> int | None:
    # IHDR is the first chunk: 8-byte signature, length, "IHDR", width, height, then the bit depth
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 25:
        return data[24]
    return None


def pixel_budget() -> int:
    """The pixel budget now: ``$BLASTSCAN_MAX_PIXELS`` when set, else :data:`DEFAULT_PIXEL_BUDGET` (never
    above :data:`MAX_PIXELS`)."""
    raw = os.environ.get(PIXEL_BUDGET_ENV, "").strip().replace("_", "")
    try:
        budget = int(float(raw)) if raw else DEFAULT_PIXEL_BUDGET
    except ValueError:
        raise BlastscanError(f"${PIXEL_BUDGET_ENV}={raw}", "expected a number of pixels, e.g. 4000000") from None
    if budget < 1:
        raise BlastscanError(f"${PIXEL_BUDGET_ENV}={raw}", "expected a positive number of pixels")
    return min(budget, MAX_PIXELS)


def over_pixel_budget(width: int, height: int) -> str | None:
    """The refusal (one line) for an image of ``width`` x ``height`` over :func:`pixel_budget`, else None."""
    budget = pixel_budget()
    if width * height > budget:
        return (f"{width}x{height} pixels, over the {budget:,}-pixel limit for one cell image (a C-NMC cell is "
                f"450x450; raise it with --max-pixels or ${PIXEL_BUDGET_ENV})")
    return None


def odd_cell_size(width: int, height: int) -> str | None:
    """A warning when ``width`` x ``height`` is far from a single-cell image (None when plausible)."""
    lo, hi = CELL_SIDE_RANGE
    if min(width, height) < lo or max(width, height) > hi:
        return (f"{width}x{height} px, far from a single-cell image (C-NMC cells are about 450x450; "
                f"expected {lo}-{hi} px a side): the score may mean little")
    return None


def _decode(data: bytes):
    """Fully decode ``data``; return ``(RGB PIL image, source mode)`` or raise :class:`_Refused`."""
    try:
        im = Image.open(io.BytesIO(data))
        too_big = over_pixel_budget(im.width, im.height) or (  # from the header, before any pixel is decoded
            f"{im.width}x{im.height} pixels, over the {MAX_PIXELS:,}-pixel limit for one cell image"
            if im.width * im.height > MAX_PIXELS else None)
        if too_big:
            raise _Refused(f"{too_big} (left out)", "unreadable")
        frames = getattr(im, "n_frames", 1)
        im.load()  # full decode: a truncated file fails here (LOAD_TRUNCATED_IMAGES stays False)
    except _Refused:
        raise
    except UnidentifiedImageError:
        raise _Refused("not a recognised image format (left out)", "unreadable") from None
    except Exception as exc:  # Pillow raises many types on damaged files; all mean "cannot use it"
        msg = str(exc) or type(exc).__name__
        raise _Refused(f"unreadable or truncated image ({msg}) (left out)", "unreadable") from None
    if frames > 1:
        raise _Refused(f"holds {frames} frames; one cell image per file is expected (left out)", "mode")
    src = im.mode
    # from the file header: Pillow's own mode says RGB for a 16-bit PNG (and its raw mode is internal)
    if _png_bit_depth(data) == 16 and src in ("RGB", "RGBA"):
        src = f"{src} (16-bit)"
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if (im.mode == "PA" or "transparency" in im.info) else "RGB")
    if im.mode == "RGBA":
        lo, _hi = im.getchannel("A").getextrema()
        if lo < 255:
            raise _Refused(f"has transparent pixels (mode {src}); flatten it onto a background and save as RGB "
                           "(left out)", "mode")
        im = im.convert("RGB")
    if im.mode in _GRAY:
        raise _Refused(f"{_GRAY[im.mode]} image (mode {im.mode}); colour features need RGB (left out)", "mode")
    if im.mode != "RGB":
        raise _Refused(f"unsupported colour mode {im.mode}; save it as 8-bit RGB (left out)", "mode")
    return im, src


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as an ``(H, W, 3)`` uint8 RGB array, with the mode rules of the module docstring.

    Parameters
    ----------
    path : path
        The image file.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` uint8 RGB pixels.

    Raises
    ------
    BlastscanError
        ``(path, reason)`` when the file cannot be read or its mode is refused.
    """
    return np.asarray(load_pil_image(path), dtype=np.uint8)


def load_pil_image(path: str | os.PathLike):
    """:func:`load_image` as the decoded RGB PIL image (for resizing without a full-size array copy)."""
    try:
        im, _ = _decode(read_image_bytes(path))
    except _Refused as exc:
        raise BlastscanError(str(path), str(exc).removesuffix(" (left out)")) from None
    return im


# -- checking files -------------------------------------------------------------------------------------
class Inspection(NamedTuple):
    """What reading one file found: its hash and size, or the problem that keeps it out."""

    sha256: str | None
    width: int
    height: int
    mode: str
    problem: Problem | None


def inspect_file(path: str) -> Inspection:
    """Hash and validate one file.

    Parameters
    ----------
    path : str
        The file to read (whole) and decode.

    Returns
    -------
    Inspection
        ``(sha256, width, height, source mode, None)`` for a usable image, ``(..., Problem)`` otherwise
        (``sha256`` is None when the file could not be read at all).
    """
    try:
        data = read_image_bytes(path)
    except _Refused as exc:
        return Inspection(None, 0, 0, "", Problem(path, str(exc), exc.kind))
    sha = hashlib.sha256(data).hexdigest()
    try:
        im, src = _decode(data)
    except _Refused as exc:
        return Inspection(sha, 0, 0, "", Problem(path, str(exc), exc.kind))
    return Inspection(sha, int(im.width), int(im.height), src, None)


def inspect_cache(store: str | os.PathLike | None) -> Path | None:
    """Where a feature store keeps the file-check cache for ``build_manifest``.

    Parameters
    ----------
    store : path, optional
        The feature store folder.

    Returns
    -------
    Path or None
        ``STORE/inspected.json``; None without a store.
    """
    return Path(store) / INSPECT_CACHE if store is not None else None


def _stat_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


def _load_inspect_cache(cache: Path | None) -> dict:
    if cache is None or not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
        entries = data["entries"] if isinstance(data, dict) and data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs a re-read
    return entries if isinstance(entries, dict) else {}  # hand-edited into something else: re-read


def _cached_inspection(path: str, entry) -> Inspection | None:
    """The cached result ``entry`` of :func:`inspect_files`' cache, or None when it is malformed."""
    try:
        sha, w, h, mode, problem = entry[1]
        if not (isinstance(sha, str) and isinstance(w, int) and isinstance(h, int) and isinstance(mode, str)):
            return None
        return Inspection(sha, w, h, mode, Problem(path, *problem) if problem else None)
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def inspect_files(paths: Sequence[str], jobs: int | None, progress: bool,
                  cache: Path | None) -> list[Inspection]:
    """:func:`inspect_file` for every path, reusing cached results for unchanged files.

    Parameters
    ----------
    paths : sequence of str
        Files to check, in the order the results are returned.
    jobs : int, optional
        Threads (None or <= 0: all cores).
    progress : bool
        Show a progress bar on stderr.
    cache : Path, optional
        JSON file of earlier results keyed by path, size and mtime. It lives in the feature store, so
        a second ``extract`` does not re-hash; files that could not be read are not cached.

    Returns
    -------
    list of Inspection
    """
    if cache is None:
        return _inspect_all(paths, jobs, progress)
    entries = _load_inspect_cache(cache)
    keys = [_stat_key(p) for p in paths]
    out: list = [None] * len(paths)
    todo = []
    for i, (p, k) in enumerate(zip(paths, keys)):
        e = entries.get(p)
        hit = _cached_inspection(p, e) if k is not None and isinstance(e, list) and e and e[0] == k else None
        if hit is not None:
            out[i] = hit
        else:
            todo.append(i)
    if todo:
        for i, res in zip(todo, _inspect_all([paths[i] for i in todo], jobs, progress)):
            out[i] = res
            sha, w, h, mode, problem = res
            if keys[i] is not None and (problem is None or problem.kind != "unreadable"):
                entries[paths[i]] = [keys[i], [sha, w, h, mode, [problem.reason, problem.kind] if problem else None]]
        try:
            atomic_write_bytes(cache, json.dumps({"version": 1, "entries": entries}).encode())
        except OSError:
            pass  # read-only store: the manifest is still right, only slower next time
    return out


def _inspect_all(paths: Sequence[str], jobs: int | None, progress: bool) -> list[Inspection]:
    n_jobs = max(1, os.cpu_count() or 1) if jobs is None or jobs <= 0 else int(jobs)
    bar = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr, disable=not progress,
               delay=1.0, dynamic_ncols=True)
    out = []
    try:
        if n_jobs == 1 or len(paths) < 32:
            for p in paths:
                out.append(inspect_file(p))
                bar.update()
        else:
            # threads: hashing and decoding release the GIL for most of their time, and no images are
            # pickled between processes
            for res in map_threads(inspect_file, paths, n_jobs):
                out.append(res)
                bar.update()
    finally:
        bar.close()
    return out
