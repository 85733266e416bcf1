"""The text summary of a manifest a person checks at a glance, and the counted list of its problems."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Sequence

import pandas as pd

from blastscan.dataset.layouts import natural_key
from blastscan.dataset.manifest import Manifest, duplicate_table
from blastscan.dataset.problems import Problem

__all__ = ["format_problems", "missing_rows_by_csv", "problems_note", "summarize"]

_LAYOUT_TEXT = {"cnmc": "C-NMC 2019 layout", "folders": "class folders (all/, hem/)", "csv": "CSV list",
                "files": "plain files"}

_KIND_TEXT = {
    "missing_image": "listed in a CSV, but no image file",
    "unreadable": "unreadable, truncated or not an image (left out)",
    "mode": "unsupported image mode (left out)",
    "no_label": "no label (kept unlabelled)",
    "label_conflict": "labels disagree (kept unlabelled)",
    "not_an_image": "not an image file (left out)",
    "listed_twice": "listed twice (kept once)",
    "no_subject": "no subject (compare/train refuse without --subject-pattern or --per-image-split)",
    "mixed_subject": "subject with cells of both classes",
    "csv": "unusable CSV",
    "dup_label": "identical images with different labels",
}

# most serious first: files lost or labels in doubt come before rows of a CSV without an image
_KIND_ORDER = ["unreadable", "mode", "not_an_image", "label_conflict", "dup_label", "no_label", "csv",
               "no_subject", "listed_twice", "missing_image"]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_problems(problems: Sequence[Problem], limit: int | None = 20,
                    root: str | os.PathLike | None = None) -> list[str]:
    """Lines describing ``problems``: counts per kind, then up to ``limit`` problems, most serious first.

    Parameters
    ----------
    problems : sequence of Problem
        In file order; the order is kept within each kind.
    limit : int, optional
        How many problems to list one by one (None: all).
    root : path, optional
        Paths under ``root`` are shown relative to it, to keep lines short.

    Returns
    -------
    list of str
    """
    if not problems:
        return ["problems: none"]
    lines = [f"problems: {len(problems):,}"]
    rank = {k: i for i, k in enumerate(_KIND_ORDER)}
    ordered = sorted(problems, key=lambda p: rank.get(p.kind, -1))  # stable: file order within a kind
    # rows of a CSV whose images are not here (a subset of a dataset): one line per CSV, not one per row
    by_csv = missing_rows_by_csv(ordered) if limit is not None else {}
    grouped = {id(p) for rows in by_csv.values() for p in rows}
    ordered = [p for p in ordered if id(p) not in grouped]
    kinds = Counter(p.kind for p in ordered)
    for kind, n in sorted(kinds.items(), key=lambda kv: rank.get(kv[0], -1)):
        lines.append(f"  {n:>7,}  {_KIND_TEXT.get(kind, kind)}")
    for name, rows in by_csv.items():
        lines.append(f"  {name}: {_missing_text(rows)}")
    if limit is not None:
        limit = max(0, limit - len(by_csv))
    shown = ordered if limit is None else ordered[:limit]
    base = os.path.abspath(root) if root is not None else None
    for p in shown:
        path = p.path
        if base and os.path.isabs(path) and (path + os.sep).startswith(base + os.sep) and path != base:
            path = os.path.relpath(path, base)
        lines.append(f"  {path}: {p.reason}")
    if len(shown) < len(ordered):
        lines.append(f"  ... and {len(ordered) - len(shown):,} more")
    return lines


_LISTED = re.compile(r"^listed in (?P<csv>.+?)(?: \(line (?P<a>\d+)\)| line (?P<b>\d+)), but no image file$")


def missing_rows_by_csv(problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    """The ``missing_image`` problems that are rows of a CSV, per CSV name (in order of first appearance)."""
    out: dict[str, list[Problem]] = {}
    for p in problems:
        m = _LISTED.match(p.reason) if p.kind == "missing_image" else None
        if m:
            out.setdefault(m["csv"], []).append(p)
    return out


def _missing_text(rows: Sequence[Problem]) -> str:
    """``"1,856 rows (lines 12-1,867) list an image that is not here"``."""
    lines = [int(m["a"] or m["b"]) for p in rows if (m := _LISTED.match(p.reason))]
    span = f" (lines {min(lines):,}-{max(lines):,})" if len(lines) > 1 else f" (line {lines[0]:,})"
    return f"{_plural(len(rows), 'row')}{span} list{'s' if len(rows) == 1 else ''} an image that is not here"


def problems_note(problems: Sequence[Problem], dataset) -> str:
    """The one line a command other than ``data`` says about a dataset's problems."""
    by_csv = missing_rows_by_csv(problems)
    parts = [f"{name}: {_missing_text(rows)}" for name, rows in by_csv.items()]
    rest = [p for p in problems if not (p.kind == "missing_image" and _LISTED.match(p.reason))]
    if rest:
        rank = {k: i for i, k in enumerate(_KIND_ORDER)}
        counts = sorted(Counter(p.kind for p in rest).items(), key=lambda kv: rank.get(kv[0], -1))
        parts.append("; ".join(f"{n:,} {_KIND_TEXT.get(k, k)}" for k, n in counts))
    head = f"{len(problems):,} problems in the dataset: " if rest else ""
    return f"note: {head}{'; '.join(parts)}; `blastscan data {dataset} --problems FILE` writes the list"


def summarize(manifest: Manifest, *, max_problems: int = 20) -> str:
    """A summary a person can check at a glance: classes, subjects, splits, duplicates and problems.

    Parameters
    ----------
    manifest : Manifest
    max_problems : int
        How many problems to list one by one (all are counted).

    Returns
    -------
    str
        Several lines, without a final newline.
    """
    df = manifest.df
    label = df["label"].astype("object").where(df["label"].notna(), "unlabelled")
    subj = df[df["subject"].notna()]
    out = _overview_lines(manifest, label, subj)
    out += _split_lines(df, label)
    out += _subject_lines(subj, label[subj.index])
    out += _duplicate_lines(df)
    if manifest.notes:
        out += [""] + [f"note: {x}" for x in manifest.notes]
    out += [""] + format_problems(manifest.problems, max_problems, root=manifest.root)
    return "\n".join(out)


def _overview_lines(manifest: Manifest, label: pd.Series, subj: pd.DataFrame) -> list[str]:
    """Layout, images per class, subjects per class and split groups."""
    df = manifest.df
    per_class = label.value_counts()
    subj_label = label[subj.index]
    n_subj = {c: subj.loc[subj_label == c, "subject"].nunique() for c in ("all", "hem")}
    return [f"{_LAYOUT_TEXT.get(manifest.layout, manifest.layout)} at {manifest.root}",
            f"{len(df):,} images: {per_class.get('all', 0):,} all, {per_class.get('hem', 0):,} hem, "
            f"{per_class.get('unlabelled', 0):,} unlabelled",
            f"subjects: {n_subj['all']} all, {n_subj['hem']} hem"
            + (f"; {_plural(int(df['subject'].isna().sum()), 'image')} without subject" if df["subject"].isna().any()
               else "")
            + f"; {df['group'].nunique():,} split groups"]


def _split_lines(df: pd.DataFrame, label: pd.Series) -> list[str]:
    """A table of images per source split and class, with totals."""
    table = pd.crosstab(df["source_split"].astype(str), label)
    for c in ("all", "hem", "unlabelled"):
        if c not in table:
            table[c] = 0
    table = table[["all", "hem", "unlabelled"]]
    table = table.loc[sorted(table.index, key=natural_key)]
    out = ["", f"{'source split':<14}{'all':>8}{'hem':>8}{'unlabelled':>12}{'total':>8}"]
    for split, r in table.iterrows():
        out.append(f"{split:<14}{r['all']:>8,}{r['hem']:>8,}{r['unlabelled']:>12,}{int(r.sum()):>8,}")
    out.append(f"{'total':<14}{int(table['all'].sum()):>8,}{int(table['hem'].sum()):>8,}"
               f"{int(table['unlabelled'].sum()):>12,}{len(df):>8,}")
    return out


def _subject_lines(subj: pd.DataFrame, subj_label: pd.Series) -> list[str]:
    """Images per subject and class, compact: several "subject class n" cells per line."""
    if not len(subj):
        return []
    counts = Counter(zip(subj["subject"].astype(str), subj_label.astype(str)))
    order = {"all": 0, "hem": 1}
    ranked = sorted(counts.items(), key=lambda kv: (order.get(kv[0][1], 2), natural_key(kv[0][0])))
    cells = [f"{s:>6} {c:<4}{k:>5,}" for (s, c), k in ranked]
    per_line = 5
    out = ["", f"per subject ({len(cells)} subject/class pairs: subject class n):"]
    out += ["  " + "   ".join(cells[i:i + per_line]) for i in range(0, len(cells), per_line)]
    return out


def _duplicate_lines(df: pd.DataFrame) -> list[str]:
    """Groups of identical images, and the subjects they merge into one split group."""
    dups = duplicate_table(df)
    out = [""]
    if dups.empty:
        out.append(f"duplicates: none (all {len(df):,} images have distinct content)")
        return out
    out.append(f"duplicates: {len(dups):,} groups of identical images ({int(dups['n'].sum()):,} files)")
    across = dups[dups["subjects"].str.contains("+", regex=False)]
    if len(across):
        per_link = Counter(across["subjects"])
        out.append("  identical images under several subjects (these subjects are merged into one split group):")
        out += [f"    {link}: {k:,} image{'s' if k != 1 else ''}"
                for link, k in sorted(per_link.items(), key=lambda kv: (-kv[1], natural_key(kv[0])))]
        merged = sorted({g for g in df["group"].dropna() if "+" in g}, key=natural_key)
        out.append(f"  split groups merging subjects: {', '.join(merged)}")
    within = len(dups) - len(across)
    if within:
        out.append(f"  {within:,} group{'s' if within != 1 else ''} within one subject or without subject")
    return out
