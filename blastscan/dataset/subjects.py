"""Subjects: taking them from file names with a pattern, finding subjects that hold both classes, and
refusing to call an evaluation subject-disjoint when images have no subject.

An image without a subject is never silently its own patient: ``compare``/``train``/``export`` refuse
with one line (:func:`require_subjects`) unless a per-image split is asked for explicitly, and then every
output carries :func:`leaky_label`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from blastscan.dataset.problems import Problem
from blastscan.errors import BlastscanError

__all__ = ["HOW_TO_GIVE_SUBJECTS", "apply_subject_pattern", "mixed_subjects", "require_subjects",
           "leaky_label", "missing_subject_mask"]

HOW_TO_GIVE_SUBJECTS = ("give them with a 'subject' column in a dataset CSV or --subject-pattern REGEX (the "
                        "subject taken from each file name), or pass --per-image-split for a per-image split "
                        "that every output labels as leaky")


def compile_pattern(pattern: str) -> re.Pattern:
    """The ``--subject-pattern`` regex; the subject is its group ``subject``, else group 1, else the match."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise BlastscanError("--subject-pattern", f"not a valid regular expression ({exc})") from None


def subject_from_name(rx: re.Pattern, name: str) -> str | None:
    m = rx.search(name)
    if m is None:
        return None
    if "subject" in rx.groupindex:
        value = m.group("subject")
    elif rx.groups:
        value = m.group(1)
    else:
        value = m.group(0)
    return value.strip() or None if value else None


def apply_subject_pattern(rows, pattern: str | None) -> int:
    """Fill the ``subject`` of layout rows that have none from their file name; return how many got one."""
    if not pattern:
        return 0
    rx = compile_pattern(pattern)
    n = 0
    for row in rows:
        if not row.subject:
            row.subject = subject_from_name(rx, Path(row.path).name)
            n += row.subject is not None
    return n


def missing_subject_mask(df: pd.DataFrame) -> pd.Series:
    """True for labelled rows without a subject."""
    labelled = df["label"].isin(["all", "hem"]).fillna(False).astype(bool)
    no_subject = df["subject"].isna() | (df["subject"].astype(object).astype(str).str.strip() == "")
    return labelled & no_subject.astype(bool)


def mixed_subjects(df: pd.DataFrame) -> list[Problem]:
    """One problem per subject whose labelled cells are of both classes (C-NMC subjects are one class)."""
    lab = df[df["label"].isin(["all", "hem"]).fillna(False).astype(bool) & df["subject"].notna()]
    out = []
    for subject, part in lab.groupby("subject", sort=True):
        counts = part["label"].value_counts()
        if len(counts) > 1:
            out.append(Problem(f"subject {subject}", f"holds cells of both classes ({int(counts.get('all', 0))} ALL, "
                                                     f"{int(counts.get('hem', 0))} HEM); C-NMC subjects are one "
                                                     "class each: check the subject column or pattern "
                                                     "(the report says so)", "mixed_subject"))
    return out


def require_subjects(df: pd.DataFrame, per_image_split: bool, what: str = "subjects") -> str | None:
    """Refuse an evaluation that cannot be subject-disjoint, or return its leaky label when asked for.

    Parameters
    ----------
    df : DataFrame
        A manifest (labelled rows are the ones evaluated).
    per_image_split : bool
        Run anyway, each image without subject its own group (``--per-image-split``).

    Returns
    -------
    str or None
        None when every labelled image has a subject; else the leaky label (see :func:`leaky_label`).

    Raises
    ------
    BlastscanError
        When images lack a subject and ``per_image_split`` is false (one line: how many, how to give them).
    """
    missing = missing_subject_mask(df)
    n_missing, n = int(missing.sum()), int(df["label"].isin(["all", "hem"]).fillna(False).sum())
    if n_missing == 0:
        return None
    if not per_image_split:
        raise BlastscanError(what, f"{n_missing:,} of {n:,} labelled images have no subject, so no split can be "
                                   f"subject-disjoint; {HOW_TO_GIVE_SUBJECTS}")
    return leaky_label(n_missing, n)


def leaky_label(n_missing: int, n: int) -> str:
    """The label every output of a per-image split carries."""
    return (f"LEAKY per-image split: {n_missing:,} of {n:,} labelled images have no subject, each is its own "
            "split group, so cells of one patient can sit on both sides; these numbers do NOT estimate "
            "performance on new patients")
