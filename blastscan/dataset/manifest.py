"""The manifest: one row per usable image (path, content hash, label, subject, split group), the
problems found while reading them, and its dtypes and file IO.

Duplicates are found by content: rows with the same sha256 share a ``dup_group`` id, and subjects linked
by an identical image are merged into one ``group`` (union-find), the unit every split keeps on one side.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from blastscan._io import atomic_path
from blastscan.dataset.images import IMAGE_EXTENSIONS, Inspection, inspect_files
from blastscan.dataset.layouts import Collected, collect, natural_key
from blastscan.dataset.problems import Problem
from blastscan.dataset.subjects import apply_subject_pattern, missing_subject_mask, mixed_subjects
from blastscan.errors import BlastscanError

__all__ = ["COLUMNS", "Manifest", "assign_groups", "build_manifest", "duplicate_table", "labelled",
           "labelled_rows", "read_manifest", "write_manifest"]

COLUMNS = ["path", "sha256", "label", "subject", "group", "source_split", "width", "height", "dup_group"]
_STR_COLUMNS = ["path", "sha256", "label", "subject", "group", "source_split"]
_INT_COLUMNS = ["width", "height", "dup_group"]
# pandas 3 has a string dtype whose missing value is NaN; pandas 2 keeps strings as objects with None
_STR_DTYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


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


# -- building ------------------------------------------------------------------------------------------
def build_manifest(source, *, jobs: int | None = None, progress: bool = False,
                   cache: str | os.PathLike | None = None, allow_empty: bool = False,
                   subject_pattern: str | None = None) -> Manifest:
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
    allow_empty : bool
        Return a manifest without rows (and with every problem) when no image is usable, instead of
        raising (a scorer reports each refused file as a row).
    subject_pattern : str, optional
        Regular expression taking the subject from each file name that carries none (group ``subject``,
        else group 1, else the whole match), e.g. ``^(P[0-9]+)_``.

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
    col = collect(source)
    if subject_pattern:
        n_found = apply_subject_pattern(col.rows, subject_pattern)
        col.notes.append(f"--subject-pattern {subject_pattern}: subject taken from {n_found:,} file names")
    if not col.rows and allow_empty:
        return _empty(col)
    if not col.rows:
        hint = f" ({_problem_counts(col.problems)})" if col.problems else ""
        raise BlastscanError(col.what, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files){hint}")
    results = inspect_files([r.path for r in col.rows], jobs, progress, Path(cache) if cache else None)
    df = _usable_rows(col, results, allow_empty)
    if not len(df):
        return _empty(col)
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    df = assign_groups(df, col.problems)
    _subject_problems(df, col)
    return Manifest(df=_coerce(df[COLUMNS]), problems=col.problems, layout=col.layout, root=col.root,
                    notes=col.notes)


def _empty(col: Collected) -> Manifest:
    return Manifest(df=_coerce(pd.DataFrame(columns=COLUMNS)), problems=col.problems, layout=col.layout,
                    root=col.root, notes=col.notes)


def _usable_rows(col: Collected, results: list[Inspection], allow_empty: bool = False) -> pd.DataFrame:
    """The rows whose image passed its check; refused files go to ``col.problems``, conversions to its notes."""
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
    if not records and not allow_empty:
        raise BlastscanError(col.what, f"no usable images: every image file found ({len(col.rows)}) was refused "
                                       f"({_problem_counts(col.problems)})")
    return pd.DataFrame.from_records(records, columns=["path", "sha256", "label", "subject", "source_split",
                                                      "width", "height"])


def _problem_counts(problems: list[Problem]) -> str:
    """``"3 unreadable, 2 mode, e.g. <first>"``: every reason counted, one example."""
    counts = Counter(p.kind for p in problems)
    text = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    return f"{text}; e.g. {problems[0]}" if problems else text


def _subject_problems(df: pd.DataFrame, col: Collected) -> None:
    """Labelled images without a subject and subjects holding both classes are listed problems."""
    if col.layout != "files":  # scored inputs need no subject
        flagged = {p.path for p in col.problems if p.kind == "no_subject"}
        for path in df.loc[missing_subject_mask(df), "path"]:
            if path not in flagged:
                col.problems.append(Problem(path, "no subject (from a 'subject' column or --subject-pattern): "
                                                  "evaluation cannot be subject-disjoint", "no_subject"))
    col.problems.extend(mixed_subjects(df))


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
        subjects = sorted((u[2:] for u in us if u.startswith("s:")), key=natural_key)
        names[rep] = "+".join(subjects) if subjects else sorted(us)[0]
    df["group"] = [names[find(u)] for u in units]

    # the same content labelled both ways would teach a model two answers for one image
    for sha, rows in df[df["dup_group"] >= 0].groupby("sha256", sort=False):
        rows = rows[rows["label"].notna()]  # an unlabelled copy (test phase) contradicts nothing
        if rows["label"].nunique() > 1:
            # never resolved silently: every copy is left out of training (kept unlabelled)
            df.loc[df["sha256"] == sha, "label"] = None
            first = rows.iloc[0]
            for _, r in rows.iloc[1:].iterrows():
                if r["label"] != first["label"] and problems is not None:
                    problems.append(Problem(r["path"], f"identical to {first['path']}, which is labelled "
                                                       f"{first['label']}, but labelled {r['label']} here; both left out "
                                                       "of training (kept unlabelled)",
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
def _lower_labels(df: pd.DataFrame) -> pd.Series:
    return df["label"].astype("string").str.lower()


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose label is ``all`` or ``hem`` (in any case; the rows as given)."""
    return df[_lower_labels(df).isin(["all", "hem"]).fillna(False).to_numpy(dtype=bool)]


def labelled_rows(manifest_df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of :func:`labelled` ready to split and fit on (labels lower-cased), each with a split
    ``group``, a ``subject``, a ``source_split`` and a ``_row`` position; and the number of unlabelled rows
    left out.

    ``group`` is the split unit; it falls back to the subject, then to the image itself, so nothing is
    ungrouped.
    """
    df = labelled(manifest_df).copy()
    n_unlabelled = len(manifest_df) - len(df)
    df["label"] = _lower_labels(df).astype(str).to_numpy()
    missing = pd.Series(pd.NA, index=df.index, dtype="string")
    subject = df["subject"].astype("string") if "subject" in df else missing
    group = df["group"].astype("string") if "group" in df else missing
    group = group.fillna(subject).fillna("img:" + df["sha256"].astype("string").str[:12])
    df["group"] = group.astype(str).to_numpy()
    df["subject"] = subject.fillna(df["group"]).astype(str).to_numpy()
    if "source_split" not in df:
        df["source_split"] = ""
    df["source_split"] = df["source_split"].astype("string").fillna("").astype(str).to_numpy()
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df))
    return df, n_unlabelled


def duplicate_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group of byte-identical images: ``dup_group, n, subjects, labels, paths``."""
    dups = df[df["dup_group"] >= 0]
    rows = []
    for g, part in dups.groupby("dup_group", sort=True):
        subjects = sorted({s for s in part["subject"] if isinstance(s, str)}, key=natural_key)
        labels = sorted({x for x in part["label"] if isinstance(x, str)})
        rows.append({"dup_group": int(g), "n": len(part), "subjects": "+".join(subjects), "labels": "+".join(labels),
                     "paths": list(part["path"])})
    return pd.DataFrame(rows, columns=["dup_group", "n", "subjects", "labels", "paths"])


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest atomically, as CSV or Parquet by the file's suffix; return the path."""
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
