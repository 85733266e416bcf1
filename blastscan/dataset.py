"""Find the images of a dataset, check every one, and describe them in a manifest (one row per image).

Layouts understood by :func:`build_manifest`:

``cnmc``
    The C-NMC 2019 tree (``training_data/fold_k/{all,hem}/``, ``validation_data/`` with the
    preliminary-phase images and their labels CSV, ``testing_data/`` with the unlabelled final phase),
    found when the folder given is ``C-NMC_Leukemia``, the folder holding it, or up to three levels above.
``folders``
    Class folders: every image under a folder named ``all`` or ``hem`` (any depth) takes that label.
``csv``
    A CSV with columns ``path,label[,subject][,source_split]``; paths are absolute or relative to the
    CSV's folder; labels ``all``/``hem`` or ``1``/``0`` (1 = ALL, 0 = HEM, as the challenge defines them).
``files``
    A folder without either structure, a single image, or a list of files, folders and CSVs (what
    ``score`` passes). Folders are searched recursively; labels and subjects come from C-NMC names
    (``UID_<subject>_<image>_<cell>_<all|hem>``) when the names follow it, else stay empty.

Every image is read, hashed (sha256 of the file bytes) and fully decoded once. Problems are collected,
one line per file (:class:`Problem`), never raised one by one; only "nothing usable" raises.

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

Duplicates are found by content: rows with the same sha256 share a ``dup_group`` id, and subjects linked
by an identical image are merged into one ``group`` (union-find), the unit every split keeps on one side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError

__all__ = [
    "COLUMNS",
    "IMAGE_EXTENSIONS",
    "Manifest",
    "Problem",
    "assign_groups",
    "build_manifest",
    "duplicate_table",
    "find_cnmc_roots",
    "format_problems",
    "labelled",
    "load_image",
    "parse_cnmc_name",
    "parse_label",
    "read_manifest",
    "summarize",
    "write_manifest",
]

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
COLUMNS = ["path", "sha256", "label", "subject", "group", "source_split", "width", "height", "dup_group"]
_STR_COLUMNS = ["path", "sha256", "label", "subject", "group", "source_split"]
_INT_COLUMNS = ["width", "height", "dup_group"]
# pandas 3 has a string dtype whose missing value is NaN; pandas 2 keeps strings as objects with None
_STR_DTYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else object

# UID_<subject>_<image>_<cell>_<all|hem>; healthy (HEM) subjects carry an H: UID_H10_14_1_hem
_CNMC_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)$", re.IGNORECASE)
_CNMC_LOOSE = re.compile(r"^UID_(H?\d+)(?:_.*?)?(?:_(all|hem))?$", re.IGNORECASE)
_FOLD = re.compile(r"^fold_(\d+)$", re.IGNORECASE)
_CNMC_PART = re.compile(r"(^|_)(training|validation|testing)_data$|test_(prelim|final)_phase_data$|^fold_\d+$",
                        re.IGNORECASE)
_SEARCH_DEPTH = 3  # how far below the given folder a C-NMC tree is looked for


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file, said in one line.

    Parameters
    ----------
    path : str
        The file (or expected file) concerned.
    reason : str
        What is wrong and what was done about it (left out, kept unlabelled, ...).
    kind : str
        A short category used to count problems in summaries (``unreadable``, ``mode``,
        ``missing_image``, ``no_label``, ``label_conflict``, ``not_an_image``, ``listed_twice``,
        ``no_subject``, ``csv``).
    """

    path: str
    reason: str
    kind: str = "other"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


_KIND_TEXT = {
    "missing_image": "listed in a CSV, but no image file",
    "unreadable": "unreadable, truncated or not an image (left out)",
    "mode": "unsupported image mode (left out)",
    "no_label": "no label (kept unlabelled)",
    "label_conflict": "labels disagree (kept unlabelled)",
    "not_an_image": "not an image file (left out)",
    "listed_twice": "listed twice (kept once)",
    "no_subject": "no subject in the name (own split group)",
    "csv": "unusable CSV",
    "dup_label": "identical images with different labels",
}


@dataclass
class Manifest:
    """The images of a dataset and what was found wrong while reading them.

    Attributes
    ----------
    df : DataFrame
        One row per usable image, columns :data:`COLUMNS` (see :func:`build_manifest`).
    problems : list of Problem
        Files left out, rows without an image, labels missing or disagreeing.
    layout : str
        ``cnmc``, ``folders``, ``csv`` or ``files``.
    root : Path
        The folder the layout was found in (the ``C-NMC_Leukemia`` folder, the class-folder root,
        the CSV's folder, or the common folder of a list of inputs).
    notes : list of str
        Facts worth a line in the summary (labels CSVs used, images converted to RGB, ...).
    """

    df: pd.DataFrame
    problems: list[Problem]
    layout: str
    root: Path
    notes: list[str] = field(default_factory=list)

    def duplicates(self) -> pd.DataFrame:
        """One row per group of byte-identical images: ``dup_group, n, subjects, labels, paths``."""
        return duplicate_table(self.df)


# ------------------------------------------------------------------------------------------------
def parse_label(value) -> str | None:
    """``"all"``/``"hem"`` from a label written as all/hem (any case) or 1/0 (1 = ALL, 0 = HEM).

    Returns ``None`` for an empty value; raises ``ValueError`` for anything else.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in ("all", "1", "1.0"):
        return "all"
    if text in ("hem", "0", "0.0"):
        return "hem"
    raise ValueError(f"unknown label {value!r} (expected all/hem or 1/0)")


def parse_cnmc_name(name: str) -> tuple[str | None, str | None]:
    """``(subject, label)`` from a C-NMC file name, e.g. ``UID_H10_14_1_hem.bmp -> ("H10", "hem")``.

    Either is ``None`` when the name does not carry it (numbered test images: ``(None, None)``).
    """
    stem = Path(name).stem
    m = _CNMC_NAME.match(stem)
    if m:
        return _norm_subject(m.group(1)), m.group(4).lower()
    m = _CNMC_LOOSE.match(stem)
    if m:
        return _norm_subject(m.group(1)), (m.group(2) or "").lower() or None
    return None, None


def _norm_subject(s: str) -> str:
    return s.upper() if s[:1] in "hH" else s


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


# -- image decoding -------------------------------------------------------------------------------------
class _Refused(Exception):
    """An image we will not use; the message is the one-line reason."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.kind = kind


_GRAY = {"L": "8-bit grayscale", "LA": "grayscale with alpha", "1": "black-and-white (1-bit)",
         "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale",
         "I;16N": "16-bit grayscale", "I": "32-bit integer grayscale", "F": "32-bit float grayscale"}


def _decode(data: bytes):
    """Fully decode ``data``; return ``(RGB PIL image, source mode)`` or raise :class:`_Refused`."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        frames = getattr(im, "n_frames", 1)
        im.load()  # full decode: a truncated file fails here (LOAD_TRUNCATED_IMAGES stays False)
    except UnidentifiedImageError:
        raise _Refused("not a recognised image format (left out)", "unreadable") from None
    except Exception as exc:  # Pillow raises many types on damaged files; all mean "cannot use it"
        msg = str(exc) or type(exc).__name__
        raise _Refused(f"unreadable or truncated image ({msg}) (left out)", "unreadable") from None
    if frames > 1:
        raise _Refused(f"holds {frames} frames; one cell image per file is expected (left out)", "mode")
    src = im.mode
    rawmode = getattr(getattr(im, "png", None), "im_rawmode", "") or ""
    if rawmode.endswith(";16B") and src in ("RGB", "RGBA"):
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

    Raises
    ------
    BlastscanError
        ``(path, reason)`` when the file cannot be read or its mode is refused.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BlastscanError(str(path), f"cannot read ({exc.strerror or exc})") from None
    try:
        im, _ = _decode(data)
    except _Refused as exc:
        raise BlastscanError(str(path), str(exc).removesuffix(" (left out)")) from None
    return np.asarray(im, dtype=np.uint8)


def _inspect(path: str) -> tuple:
    """Hash and validate one file: ``(sha256, width, height, source mode, None)`` or ``(..., Problem)``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, 0, 0, "", Problem(path, f"cannot read ({exc.strerror or exc}) (left out)", "unreadable")
    sha = hashlib.sha256(data).hexdigest()
    try:
        im, src = _decode(data)
    except _Refused as exc:
        return sha, 0, 0, "", Problem(path, str(exc), exc.kind)
    return sha, int(im.width), int(im.height), src, None


INSPECT_CACHE = "inspected.json"  # file-check cache kept in a feature store folder


def inspect_cache(store: str | os.PathLike | None) -> Path | None:
    """Where a feature store keeps the file-check cache for :func:`build_manifest` (None without a store)."""
    return Path(store) / INSPECT_CACHE if store is not None else None


def _stat_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _load_inspect_cache(cache: Path | None) -> dict:
    if cache is None or not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
        return data["entries"] if data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs a re-read


def _inspect_cached(paths: Sequence[str], jobs: int | None, progress: bool, cache: Path | None) -> list[tuple]:
    """:func:`_inspect_all`, reusing results for files whose size and mtime are unchanged since they
    were last read (the cache lives in the feature store, so a second ``extract`` does not re-hash)."""
    if cache is None:
        return _inspect_all(paths, jobs, progress)
    entries = _load_inspect_cache(cache)
    keys = [_stat_key(p) for p in paths]
    out: list = [None] * len(paths)
    todo = []
    for i, (p, k) in enumerate(zip(paths, keys)):
        e = entries.get(p)
        if k is not None and e is not None and e[0] == k:
            sha, w, h, mode, problem = e[1]
            out[i] = (sha, w, h, mode, Problem(p, *problem) if problem else None)
        else:
            todo.append(i)
    if todo:
        for i, res in zip(todo, _inspect_all([paths[i] for i in todo], jobs, progress)):
            out[i] = res
            sha, w, h, mode, problem = res
            if keys[i] is not None and (problem is None or problem.kind != "unreadable"):
                entries[paths[i]] = [keys[i], [sha, w, h, mode, [problem.reason, problem.kind] if problem else None]]
        from blastscan.features.store import atomic_write_bytes

        try:
            atomic_write_bytes(cache, json.dumps({"version": 1, "entries": entries}).encode())
        except OSError:
            pass  # read-only store: the manifest is still right, only slower next time
    return out


def _inspect_all(paths: Sequence[str], jobs: int | None, progress: bool) -> list[tuple]:
    from tqdm.auto import tqdm

    n_jobs = max(1, os.cpu_count() or 1) if jobs is None or jobs <= 0 else int(jobs)
    bar = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr, disable=not progress,
               delay=1.0, dynamic_ncols=True)
    out = []
    try:
        if n_jobs == 1 or len(paths) < 32:
            for p in paths:
                out.append(_inspect(p))
                bar.update()
        else:
            from joblib import Parallel, delayed

            # threads: hashing and decoding release the GIL for most of their time, and no images are
            # pickled between processes
            parallel = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator", batch_size=8)
            for res in parallel(delayed(_inspect)(p) for p in paths):
                out.append(res)
                bar.update()
    finally:
        bar.close()
    return out


# -- finding files -----------------------------------------------------------------------------------
def _is_image(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _skip_name(name: str) -> bool:
    # dotfiles, macOS resource forks (._UID_1_1_1_all.bmp is not an image) and __MACOSX folders of zips
    return name.startswith(".") or name == "__MACOSX"


def _walk_images(root: Path, others: list[Path] | None = None) -> list[Path]:
    """Image files under ``root`` (recursively, following links once), sorted; other files are ignored,
    or appended to ``others`` when it is given."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _skip_name(d))
        found += [Path(dirpath) / f for f in filenames if not _skip_name(f) and _is_image(f)]
        if others is not None:
            others += [Path(dirpath) / f for f in filenames if not _skip_name(f) and not _is_image(f)]
    return sorted(found)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not _skip_name(p.name))
    except OSError:
        return []


def find_cnmc_roots(folder: str | os.PathLike) -> list[Path]:
    """The C-NMC tree(s) in or below ``folder`` (the folders holding ``training_data`` etc.), shallowest first.

    ``folder`` itself counts when it holds ``training_data``/``validation_data``/``testing_data`` (or the
    TCIA names ``C-NMC_training_data``, ``C-NMC_test_*_phase_data``) or ``fold_k`` folders; otherwise its
    sub-folders are searched, down to three levels, and the shallowest matches are returned.
    """
    level = [Path(folder)]
    for _depth in range(_SEARCH_DEPTH + 1):
        hits = [d for d in level if any(_CNMC_PART.search(c.name) for c in _subdirs(d))]
        if hits:
            return hits
        level = [c for d in level for c in _subdirs(d)]
        if not level:
            break
    return []


def _has_class_folders(folder: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _skip_name(d)]
        if Path(dirpath) != folder and Path(dirpath).name.lower() in ("all", "hem") and any(map(_is_image, filenames)):
            return True
    return False


# -- candidate rows ------------------------------------------------------------------------------------
@dataclass
class _Row:
    path: str
    label: str | None
    subject: str | None
    source_split: str


class _Collector:
    """Rows and problems gathered while walking a layout (before the images are read)."""

    def __init__(self):
        self.rows: list[_Row] = []
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._seen: dict[str, str] = {}

    def add(self, path: Path | str, label, subject, split, *, where: str = "") -> None:
        path = os.path.abspath(path)
        key = os.path.realpath(path)
        if key in self._seen:
            self.problems.append(Problem(path, f"listed twice{where}; kept once", "listed_twice"))
            return
        self._seen[key] = path
        self.rows.append(_Row(path, label, subject, split))

    def problem(self, path, reason, kind) -> None:
        self.problems.append(Problem(os.path.abspath(path), reason, kind))


def _label_from_name_and(path: Path, other: str | None, other_what: str,
                         col: _Collector) -> tuple[str | None, str | None]:
    """Subject and label of ``path``, checking the label its name carries against ``other``."""
    subject, name_label = parse_cnmc_name(path.name)
    if other is not None and name_label is not None and other != name_label:
        col.problem(path, f"label disagrees: {other_what} says {other}, the name says {name_label}; "
                          "kept unlabelled", "label_conflict")
        return subject, None
    return subject, other if other is not None else name_label


def _collect_cnmc(roots: list[Path], col: _Collector) -> None:
    for root in roots:
        images = _walk_images(root)
        phase_images: dict[str, list[Path]] = defaultdict(list)
        for path in images:
            parts = path.relative_to(root).parts[:-1]
            fold = next((m.group(1) for p in parts if (m := _FOLD.match(p))), None)
            in_training = fold is not None or any("training" in p.lower() for p in parts) \
                or root.name.lower().endswith("training_data")
            if in_training:
                split = f"fold_{int(fold)}" if fold is not None else "training"
                folder_label = next((p.lower() for p in reversed(parts) if p.lower() in ("all", "hem")), None)
                subject, label = _label_from_name_and(path, folder_label, f"its folder {folder_label}/", col)
                if label is None and folder_label is None:
                    col.problem(path, "not in an all/ or hem/ folder and the name carries no label; kept unlabelled",
                                "no_label")
                if subject is None:
                    col.problem(path, "name does not follow UID_<subject>_<image>_<cell>_<all|hem>: no subject "
                                      "(it becomes its own split group)", "no_subject")
                col.add(path, label, subject, split)
            else:
                low = "/".join(parts).lower()
                phase = "prelim" if "prelim" in low else "final" if "final" in low else "other"
                phase_images[phase].append(path)
        _collect_phases(root, phase_images, col)


def _read_phase_csv(path: Path, col: _Collector) -> dict[str, tuple[int, str, str, str]] | None:
    """``{image stem: (csv line, new_names, labels, Patient_ID)}`` of a C-NMC phase labels CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if not {"new_names", "labels"} <= set(fields):
                return None
            out = {}
            for i, rec in enumerate(reader, start=2):
                new = (rec.get(fields["new_names"]) or "").strip()
                if not new:
                    continue
                out.setdefault(Path(new).stem, (i, new, rec.get(fields["labels"]),
                                                (rec.get(fields.get("patient_id", ""), "") or "").strip()))
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        col.problem(path, f"unreadable labels CSV ({exc}); its images stay unlabelled", "csv")
        return None


def _collect_phases(root: Path, phase_images: dict[str, list[Path]], col: _Collector) -> None:
    """Preliminary / final test phases: numbered images, labelled by their phase's CSV when one exists."""
    csvs: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(root.rglob("*.csv")):
        if not any(_skip_name(x) for x in p.relative_to(root).parts):
            low = p.name.lower()
            csvs["prelim" if "prelim" in low else "final" if "final" in low else "other"].append(p)
    for phase in ("prelim", "final", "other"):
        images = phase_images.get(phase, [])
        tables = [(p, t) for p in csvs.get(phase, []) if (t := _read_phase_csv(p, col)) is not None]
        if not tables:
            for path in images:
                subject, label = parse_cnmc_name(path.name)
                col.add(path, label, subject, phase)
            if images and phase == "prelim":
                folder = os.path.commonpath([str(p.parent) for p in images])
                col.problem(folder, f"no labels CSV (with columns Patient_ID,new_names,labels) found for its "
                                    f"{len(images)} images; kept unlabelled", "no_label")
            continue
        by_stem = defaultdict(list)
        for path in images:
            by_stem[path.stem].append(path)
        for csv_path, table in tables:
            n_labelled = 0
            image_dir = (os.path.commonpath([str(p.parent) for p in images]) if images
                         else str(csv_path.with_name(re.sub(r"_labels?$", "", csv_path.stem, flags=re.IGNORECASE))))
            for stem, (line, new, raw_label, patient) in table.items():
                if stem not in by_stem:
                    col.problem(os.path.join(image_dir, new),
                                f"listed in {csv_path.name} (line {line}), but no image file", "missing_image")
                    continue
                for path in by_stem[stem]:
                    try:
                        label = parse_label(raw_label)
                    except ValueError as exc:
                        col.problem(path, f"{csv_path.name} line {line}: {exc}; kept unlabelled", "no_label")
                        label = None
                    subject, name_label = parse_cnmc_name(patient) if patient else parse_cnmc_name(path.name)
                    if label is not None and name_label is not None and label != name_label:
                        col.problem(path, f"label disagrees: {csv_path.name} line {line} says {raw_label} "
                                          f"({label}) but its original name {patient or path.name} says "
                                          f"{name_label}; kept unlabelled", "label_conflict")
                        label = None
                    n_labelled += label is not None
                    col.add(path, label, subject, phase)
            n_missing = sum(stem not in by_stem for stem in table)
            col.notes.append(f"{phase}: {n_labelled} image{'s' if n_labelled != 1 else ''} labelled from "
                             f"{csv_path.relative_to(root)} ({len(table):,} rows; {n_missing:,} rows have no "
                             "image here)")
        listed = set().union(*(t.keys() for _, t in tables))
        for stem, paths in sorted(by_stem.items()):
            if stem not in listed:
                for path in paths:
                    subject, label = parse_cnmc_name(path.name)
                    if label is None:
                        col.problem(path, f"not in {', '.join(p.name for p, _ in tables)}: no label; kept unlabelled",
                                    "no_label")
                    col.add(path, label, subject, phase)


def _collect_folders(root: Path, col: _Collector) -> None:
    for path in _walk_images(root):
        parts = path.relative_to(root).parts[:-1]
        folder_label = next((p.lower() for p in reversed(parts) if p.lower() in ("all", "hem")), None)
        subject, label = _label_from_name_and(path, folder_label, f"its folder {folder_label}/", col)
        if label is None and folder_label is None:
            col.problem(path, "not in an all/ or hem/ folder: no label; kept unlabelled", "no_label")
        col.add(path, label, subject, "folders")


def _collect_files(paths: Iterable[Path], col: _Collector, split: str = "files") -> None:
    for path in paths:
        subject, label = parse_cnmc_name(path.name)
        col.add(path, label, subject, split)


def _collect_csv(csv_path: Path, col: _Collector, *, in_list: bool = False) -> None:
    """Rows of a ``path,label[,subject][,source_split]`` CSV (e.g. a manifest written by this module)."""
    def fail(why: str) -> None:
        # one bad CSV among several inputs is a problem; a CSV given as the dataset is an error
        if in_list:
            col.problem(csv_path, why, "csv")
        else:
            raise BlastscanError(str(csv_path), why)

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        return fail(f"cannot read the CSV ({exc})")
    cols = {c.strip().lower(): c for c in table.columns}
    if "path" not in cols:
        return fail(f"a dataset CSV needs a 'path' column (and 'label', optionally 'subject'); found: "
                    f"{', '.join(map(str, table.columns)) or 'nothing'}")
    base = csv_path.parent
    has_label = "label" in cols
    for i, rec in enumerate(table.to_dict("records"), start=2):
        raw = str(rec[cols["path"]]).strip()
        if not raw:
            continue
        path = Path(raw) if os.path.isabs(raw) else base / raw
        where = f"{csv_path.name} line {i}"
        if not path.is_file():
            col.problem(path, f"listed in {where}, but no image file", "missing_image")
            continue
        if not _is_image(path):
            col.problem(path, f"listed in {where}, but not an image file ({', '.join(IMAGE_EXTENSIONS)})",
                        "not_an_image")
            continue
        subject = str(rec[cols["subject"]]).strip() if "subject" in cols else ""
        split = str(rec[cols["source_split"]]).strip() if "source_split" in cols else ""
        label = None
        if has_label:
            try:
                label = parse_label(rec[cols["label"]])
            except ValueError as exc:
                col.problem(path, f"{where}: {exc}; kept unlabelled", "no_label")
        name_subject, name_label = parse_cnmc_name(path.name)
        if label is not None and name_label is not None and label != name_label:
            col.problem(path, f"label disagrees: {where} says {label}, the name says {name_label}; kept unlabelled",
                        "label_conflict")
            label = None
        elif label is None and has_label and not str(rec[cols["label"]]).strip():
            # a manifest written by write_manifest holds the unlabelled test phase on purpose
            if name_label is None and split not in ("final", "files"):
                col.problem(path, f"{where} gives no label; kept unlabelled", "no_label")
            label = name_label
        col.add(path, label, subject or name_subject, split or "csv", where=f" (again in {where})")


def _not_an_image(path: Path, col: _Collector) -> None:
    col.problem(os.path.abspath(path), f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})", "not_an_image")


def _collect_list(items: Sequence, col: _Collector) -> Path:
    tops = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # inputs named one by one (scoring): a stray file in a given folder is reported, not ignored
            tops.append(Path(os.path.abspath(p)))
            others: list[Path] = []
            _collect_files(_walk_images(p, others), col)
            for other in sorted(others):
                _not_an_image(other, col)
        elif p.is_file():
            tops.append(Path(os.path.abspath(p)).parent)
            if p.suffix.lower() == ".csv":
                _collect_csv(p, col, in_list=True)
            elif _is_image(p):
                _collect_files([p], col)
            else:
                _not_an_image(p, col)
        else:
            col.problem(os.path.abspath(p), "no such file or folder", "missing_image")
    return Path(os.path.commonpath([str(t) for t in tops])) if tops else Path.cwd()


# -- building ------------------------------------------------------------------------------------------
def build_manifest(source, *, jobs: int | None = None, progress: bool = False,
                   cache: str | os.PathLike | None = None) -> Manifest:
    """Find, read and check the images of ``source``; describe them in a :class:`Manifest`.

    Parameters
    ----------
    source : path or sequence of paths
        A folder (C-NMC tree, class folders, or any folder of images), a CSV (``path,label[,subject]``),
        a single image, or a list of files, folders and CSVs (layout ``files``; used by ``score``).
    jobs : int, optional
        Threads reading and hashing images (default: all cores).
    progress : bool
        Show a progress bar on stderr (only when reading takes more than a second).
    cache : path, optional
        JSON file remembering each file's hash and checks by path, size and modification time, so
        unchanged files are not read again (the CLI keeps it in the feature store).

    Returns
    -------
    Manifest
        ``df`` has one row per usable image, sorted by path: ``path`` (absolute), ``sha256`` (of the file
        bytes), ``label`` ("all"/"hem"/missing), ``subject`` (e.g. "11", "H10", or missing), ``group``
        (the split unit: subjects linked by identical images merged as "20+21"; an image without subject
        is its own group ``img:<sha256[:12]>``), ``source_split`` (``fold_k``, ``prelim``, ``final``,
        ``folders``, ``csv``, ``files``), ``width``, ``height``, ``dup_group`` (id shared by
        byte-identical images, -1 when unique).

    Raises
    ------
    BlastscanError
        When ``source`` does not exist, a CSV cannot be read, or no usable image is found.
    """
    col = _Collector()
    if isinstance(source, (list, tuple)):
        if not source:
            raise BlastscanError("inputs", "no files or folders given")
        root = _collect_list(source, col)
        layout, what = "files", ", ".join(map(str, source[:3])) + (" ..." if len(source) > 3 else "")
    else:
        src = Path(os.path.abspath(source))
        what = str(source)
        if not src.exists():
            raise BlastscanError(what, "no such file or folder")
        if src.is_file():
            if src.suffix.lower() == ".csv":
                layout, root = "csv", src.parent
                _collect_csv(src, col)
            else:
                layout, root = "files", src.parent
                _collect_list([src], col)
        else:
            cnmc = find_cnmc_roots(src)
            if cnmc:
                layout = "cnmc"
                root = cnmc[0] if len(cnmc) == 1 else src
                _collect_cnmc(cnmc, col)
            elif _has_class_folders(src):
                layout, root = "folders", src
                _collect_folders(src, col)
            else:
                layout, root = "files", src
                _collect_files(_walk_images(src), col)
    if not col.rows:
        hint = f" ({len(col.problems)} problems, e.g. {col.problems[0]})" if col.problems else ""
        raise BlastscanError(what, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files){hint}")

    results = _inspect_cached([r.path for r in col.rows], jobs, progress, Path(cache) if cache else None)
    records, modes = [], Counter()
    for row, (sha, w, h, mode, problem) in zip(col.rows, results):
        if problem is not None:
            col.problems.append(problem)
            continue
        modes[mode] += 1
        records.append((row.path, sha, row.label, row.subject, row.source_split, w, h))
    converted = {m: n for m, n in modes.items() if m != "RGB"}
    if converted:
        col.notes.append("converted to RGB: " + ", ".join(f"{n} {m}" for m, n in sorted(converted.items())))
    if not records:
        raise BlastscanError(what, f"no usable images: every image file found ({len(col.rows)}) was refused, "
                                   f"e.g. {col.problems[-1]}")

    df = pd.DataFrame.from_records(records, columns=["path", "sha256", "label", "subject", "source_split",
                                                     "width", "height"])
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    df = assign_groups(df, col.problems)
    return Manifest(df=_coerce(df[COLUMNS]), problems=col.problems, layout=layout, root=Path(root),
                    notes=col.notes)


def assign_groups(df: pd.DataFrame, problems: list[Problem] | None = None) -> pd.DataFrame:
    """Add ``dup_group`` and ``group`` to rows with ``path, sha256, label, subject`` (returns a copy).

    ``dup_group`` numbers each set of byte-identical rows (in row order; -1 when unique). ``group`` is
    the split unit: subjects that share an identical image are merged (union-find, so links chain:
    20~21 and 21~25 give ``20+21+25``); an image without subject is its own unit ``img:<sha256[:12]>``
    unless its content also appears under a subject. Identical images labelled both ways are appended
    to ``problems`` when given.
    """
    df = df.copy()
    counts = df["sha256"].map(df["sha256"].value_counts())
    dup_shas = list(dict.fromkeys(df.loc[counts > 1, "sha256"]))  # in path order, so ids are stable
    dup_id = {sha: i for i, sha in enumerate(dup_shas)}
    df["dup_group"] = df["sha256"].map(dup_id).fillna(-1).astype("int64")

    # union-find over split units: a subject, or the content of an image without subject
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def unit(subject, sha) -> str:
        return f"s:{subject}" if isinstance(subject, str) and subject else f"img:{sha[:12]}"

    units = [unit(s, h) for s, h in zip(df["subject"], df["sha256"])]
    for u in units:
        find(u)
    first_unit: dict[str, str] = {}
    for u, sha in zip(units, df["sha256"]):
        if sha in dup_id:
            if sha in first_unit:
                parent[find(u)] = find(first_unit[sha])
            else:
                first_unit[sha] = u
    members = defaultdict(set)
    for u in units:
        members[find(u)].add(u)
    names = {}
    for rep, us in members.items():
        subjects = sorted((u[2:] for u in us if u.startswith("s:")), key=_natural_key)
        names[rep] = "+".join(subjects) if subjects else sorted(us)[0]
    df["group"] = [names[find(u)] for u in units]

    # the same content labelled both ways would teach a model two answers for one image
    for sha, rows in df[df["dup_group"] >= 0].groupby("sha256", sort=False):
        rows = rows[rows["label"].notna()]  # an unlabelled copy (test phase) contradicts nothing
        if rows["label"].nunique() > 1:
            first = rows.iloc[0]
            for _, r in rows.iloc[1:].iterrows():
                if r["label"] != first["label"] and problems is not None:
                    problems.append(Problem(r["path"], f"identical to {first['path']}, which is labelled "
                                                       f"{first['label']}, but labelled {r['label']} here",
                                            "dup_label"))
    return df


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest's dtypes: strings (missing = NA) and int64, whatever produced ``df``."""
    df = df.copy()
    for c in _STR_COLUMNS:
        if c in df:
            values = df[c].astype(object).where(df[c].notna(), None)
            df[c] = values.astype(_STR_DTYPE) if _STR_DTYPE is not object else values
    for c in _INT_COLUMNS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").fillna(-1 if c == "dup_group" else 0).astype("int64")
    return df


# -- helpers on manifests -------------------------------------------------------------------------------
def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose label is ``all`` or ``hem``."""
    return df[df["label"].isin(["all", "hem"]).fillna(False).to_numpy(dtype=bool)]


def duplicate_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group of byte-identical images: ``dup_group, n, subjects, labels, paths``."""
    dups = df[df["dup_group"] >= 0]
    rows = []
    for g, part in dups.groupby("dup_group", sort=True):
        subjects = sorted({s for s in part["subject"] if isinstance(s, str)}, key=_natural_key)
        labels = sorted({x for x in part["label"] if isinstance(x, str)})
        rows.append({"dup_group": int(g), "n": len(part), "subjects": "+".join(subjects), "labels": "+".join(labels),
                     "paths": list(part["path"])})
    return pd.DataFrame(rows, columns=["dup_group", "n", "subjects", "labels", "paths"])


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest atomically, as CSV or Parquet by the file's suffix; return the path."""
    from blastscan.features.store import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise BlastscanError(str(path), "a manifest is written as .csv or .parquet")
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            if suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
    except OSError as exc:
        raise BlastscanError(str(path), f"cannot write ({exc.strerror or exc})") from None
    return path


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (subjects such as "11" stay strings)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={c: "str" for c in _STR_COLUMNS}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise BlastscanError(str(path), "no such manifest") from None
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(path), f"cannot read the manifest ({exc})") from None
    missing = [c for c in ("path", "sha256") if c not in df.columns]
    if missing:
        raise BlastscanError(str(path), f"not a manifest: no {', '.join(missing)} column")
    return _coerce(df)


# -- summary ---------------------------------------------------------------------------------------------
_LAYOUT_TEXT = {"cnmc": "C-NMC 2019 layout", "folders": "class folders (all/, hem/)", "csv": "CSV list",
                "files": "plain files"}


# most serious first: files lost or labels in doubt come before rows of a CSV without an image
_KIND_ORDER = ["unreadable", "mode", "not_an_image", "label_conflict", "dup_label", "no_label", "csv",
               "no_subject", "listed_twice", "missing_image"]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_problems(problems: Sequence[Problem], limit: int | None = 20,
                    root: str | os.PathLike | None = None) -> list[str]:
    """Lines describing ``problems``: counts per kind, then up to ``limit`` problems, most serious first.

    Paths under ``root`` are shown relative to it, to keep lines short.
    """
    if not problems:
        return ["problems: none"]
    lines = [f"problems: {len(problems):,}"]
    rank = {k: i for i, k in enumerate(_KIND_ORDER)}
    for kind, n in sorted(Counter(p.kind for p in problems).items(), key=lambda kv: rank.get(kv[0], -1)):
        lines.append(f"  {n:>7,}  {_KIND_TEXT.get(kind, kind)}")
    ordered = sorted(problems, key=lambda p: rank.get(p.kind, -1))  # stable: file order within a kind
    shown = ordered if limit is None else ordered[:limit]
    base = os.path.abspath(root) if root is not None else None
    for p in shown:
        path = p.path
        if base and os.path.isabs(path) and (path + os.sep).startswith(base + os.sep) and path != base:
            path = os.path.relpath(path, base)
        lines.append(f"  {path}: {p.reason}")
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown):,} more")
    return lines


def summarize(manifest: Manifest, *, max_problems: int = 20) -> str:
    """A summary a person can check at a glance: classes, subjects, splits, duplicates and problems."""
    df = manifest.df
    label = df["label"].astype("object").where(df["label"].notna(), "unlabelled")
    n = len(df)
    per_class = label.value_counts()
    subj = df[df["subject"].notna()]
    subj_label = label[subj.index]
    n_subj = {c: subj.loc[subj_label == c, "subject"].nunique() for c in ("all", "hem")}
    out = [f"{_LAYOUT_TEXT.get(manifest.layout, manifest.layout)} at {manifest.root}",
           f"{n:,} images: {per_class.get('all', 0):,} all, {per_class.get('hem', 0):,} hem, "
           f"{per_class.get('unlabelled', 0):,} unlabelled",
           f"subjects: {n_subj['all']} all, {n_subj['hem']} hem"
           + (f"; {_plural(int(df['subject'].isna().sum()), 'image')} without subject" if df["subject"].isna().any()
              else "")
           + f"; {df['group'].nunique():,} split groups"]

    # per source split
    table = pd.crosstab(df["source_split"].astype(str), label)
    for c in ("all", "hem", "unlabelled"):
        if c not in table:
            table[c] = 0
    table = table[["all", "hem", "unlabelled"]]
    table = table.loc[sorted(table.index, key=_natural_key)]
    out += ["", f"{'source split':<14}{'all':>8}{'hem':>8}{'unlabelled':>12}{'total':>8}"]
    for split, r in table.iterrows():
        out.append(f"{split:<14}{r['all']:>8,}{r['hem']:>8,}{r['unlabelled']:>12,}{int(r.sum()):>8,}")
    out.append(f"{'total':<14}{int(table['all'].sum()):>8,}{int(table['hem'].sum()):>8,}"
               f"{int(table['unlabelled'].sum()):>12,}{n:>8,}")

    # per subject, compact: several "subject class n" cells per line
    if len(subj):
        counts = Counter(zip(subj["subject"].astype(str), subj_label.astype(str)))
        order = {"all": 0, "hem": 1}
        ranked = sorted(counts.items(), key=lambda kv: (order.get(kv[0][1], 2), _natural_key(kv[0][0])))
        cells = [f"{s:>6} {c:<4}{k:>5,}" for (s, c), k in ranked]
        per_line = 5
        out += ["", f"per subject ({len(cells)} subject/class pairs: subject class n):"]
        out += ["  " + "   ".join(cells[i:i + per_line]) for i in range(0, len(cells), per_line)]

    # duplicates
    dups = duplicate_table(df)
    out.append("")
    if dups.empty:
        out.append(f"duplicates: none (all {n:,} images have distinct content)")
    else:
        out.append(f"duplicates: {len(dups):,} groups of identical images ({int(dups['n'].sum()):,} files)")
        across = dups[dups["subjects"].str.contains("+", regex=False)]
        if len(across):
            per_link = Counter(across["subjects"])
            out.append("  identical images under several subjects (these subjects are merged into one split group):")
            out += [f"    {link}: {k:,} image{'s' if k != 1 else ''}"
                    for link, k in sorted(per_link.items(), key=lambda kv: (-kv[1], _natural_key(kv[0])))]
            merged = sorted({g for g in df["group"].dropna() if "+" in g}, key=_natural_key)
            out.append(f"  split groups merging subjects: {', '.join(merged)}")
        within = len(dups) - len(across)
        if within:
            out.append(f"  {within:,} group{'s' if within != 1 else ''} within one subject or without subject")
    if manifest.notes:
        out += [""] + [f"note: {x}" for x in manifest.notes]
    out += [""] + format_problems(manifest.problems, max_problems, root=manifest.root)
    return "\n".join(out)
