"""The one-line report of what is wrong with one file, shared by every step that reads a dataset.

It lives apart from the manifest so that image checks and layout collectors can report problems
without importing the module that assembles their results (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem"]


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
