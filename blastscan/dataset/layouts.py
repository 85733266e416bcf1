"""Finding the images of a dataset and what their place says about them (label, subject, split):
the C-NMC tree, class folders and CSV lists, each a collector that yields candidate rows and problems.

Layouts understood by :func:`collect` (and so by ``build_manifest``):

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

Nothing here opens an image: the files found are read and checked afterwards (:mod:`.images`).
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from blastscan.dataset.images import IMAGE_EXTENSIONS
from blastscan.dataset.problems import Problem
from blastscan.errors import BlastscanError

__all__ = ["Collected", "Row", "collect", "find_cnmc_roots", "natural_key", "parse_cnmc_name", "parse_label"]

# UID_<subject>_<image>_<cell>_<all|hem>; healthy (HEM) subjects carry an H: UID_H10_14_1_hem
_CNMC_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)$", re.IGNORECASE)
_CNMC_LOOSE = re.compile(r"^UID_(H?\d+)(?:_.*?)?(?:_(all|hem))?$", re.IGNORECASE)
_FOLD = re.compile(r"^fold_(\d+)$", re.IGNORECASE)
_CNMC_PART = re.compile(r"(^|_)(training|validation|testing)_data$|test_(prelim|final)_phase_data$|^fold_\d+$",
                        re.IGNORECASE)
_SEARCH_DEPTH = 3  # how far below the given folder a C-NMC tree is looked for


# -- names and labels ----------------------------------------------------------------------------------
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


def natural_key(s: str) -> list:
    """Sort key that orders numbers by value: ``"2" < "10"``, ``"fold_2" < "fold_10"`` (case ignored)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


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
class Row:
    """One image found by a layout, before it is read: where it is and what its place says about it."""

   
    path: str
    label: str | None
    subject: str | None
    source_split: str


class _Collector:
    """Rows and problems gathered while walking a layout (before the images are read)."""

    def __init__(self):
        self.rows: list[Row] = []
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._seen: dict[str, str] = {}
        self._rows_by_key: dict[str, Row] = {}

    def listed(self, path: Path | str) -> bool:
        """Whether ``path`` (the same real file) was added already."""
        return os.path.realpath(os.path.abspath(path)) in self._seen

    def add(self, path: Path | str, label, subject, split, *, where: str = "") -> None:
        path = os.path.abspath(path)
        key = os.path.realpath(path)
        if key in self._seen:
            first = self._rows_by_key[key]
            if label is not None and first.label is not None and label != first.label:
                # two answers for one image: never pick one silently; the image is left out of training
                self.problems.append(Problem(path, f"listed twice with two labels ({first.label}, then {label}"
                                                   f"{where}); left out of training (kept unlabelled)",
                                             "label_conflict"))
                first.label = None
                return
            self.problems.append(Problem(path, f"listed twice{where}; kept once", "listed_twice"))
            return
        self._seen[key] = path
        row = Row(path, label, subject, split)
        self._rows_by_key[key] = row
        self.rows.append(row)

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
                                      "(compare/train refuse it unless --per-image-split)", "no_subject")
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
            # the rows without an image are problems of their own (said once, in one line per CSV)
            col.notes.append(f"{phase}: {n_labelled} image{'s' if n_labelled != 1 else ''} labelled from "
                             f"{csv_path.relative_to(root)} (of its {len(table):,} rows)")
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
        if col.listed(path):  # a repeated row: add() compares its label with the kept one, nothing else
            try:
                label = parse_label(rec[cols["label"]]) if has_label else None
            except ValueError:
                label = None
            col.add(path, label, subject, split or "csv", where=f" (again in {where})")
            continue
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




# -- choosing the layout --------------------------------------------------------------------------------
@dataclass
class Collected:
    """The candidate rows of a dataset and what was found wrong while walking its layout.

    Attributes
    ----------
    layout : str
        ``cnmc``, ``folders``, ``csv`` or ``files``.
    root : Path
        The folder the layout was found in.
    what : str
        The source as the user named it, for error messages.
    rows : list of Row
        One per image file found (each real file once), in walking order.
    problems : list of Problem
        Rows without an image, labels missing or disagreeing, files listed twice, ...
    notes : list of str
        Facts worth a line in the summary (labels CSVs used, ...).
    """

    layout: str
    root: Path
    what: str
    rows: list[Row]
    problems: list[Problem]
    notes: list[str]


def collect(source) -> Collected:
    """Find the layout of ``source`` and collect its candidate rows (no image is opened).

    Parameters
    ----------
    source : path or sequence of paths
        A folder (C-NMC tree, class folders, or any folder of images), a CSV (``path,label[,subject]``),
        a single image, or a list of files, folders and CSVs (layout ``files``).

    Returns
    -------
    Collected

    Raises
    ------
    BlastscanError
        When ``source`` is empty or does not exist, or a CSV given as the dataset cannot be used.
    """
    col = _Collector()
    if isinstance(source, (list, tuple)):
        if not source:
            raise BlastscanError("inputs", "no files or folders given")
        root = _collect_list(source, col)
        layout, what = "files", ", ".join(map(str, source[:3])) + (" ..." if len(source) > 3 else "")
    else:
        what = str(source)
        layout, root = _collect_path(Path(os.path.abspath(source)), what, col)
    return Collected(layout=layout, root=Path(root), what=what, rows=col.rows, problems=col.problems,
                     notes=col.notes)


def _collect_path(src: Path, what: str, col: _Collector) -> tuple[str, Path]:
    """Collect one file or folder; return its layout and root."""
    if not src.exists():
        raise BlastscanError(what, "no such file or folder")
    if src.is_file():
        if src.suffix.lower() == ".csv":
            _collect_csv(src, col)
            return "csv", src.parent
        _collect_list([src], col)
        return "files", src.parent
    cnmc = find_cnmc_roots(src)
    if cnmc:
        _collect_cnmc(cnmc, col)
        return "cnmc", cnmc[0] if len(cnmc) == 1 else src
    if _has_class_folders(src):
        _collect_folders(src, col)
        return "folders", src
    _collect_files(_walk_images(src), col)
    return "files", src
