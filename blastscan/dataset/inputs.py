"""The images given to ``score`` (files, folders, CSVs or a manifest): their manifest, and one row per file
that could not be used, with the reason as its status."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from blastscan.dataset.images import inspect_cache
from blastscan.dataset.layouts import parse_cnmc_name
from blastscan.dataset.manifest import build_manifest
from blastscan.errors import BlastscanError

__all__ = ["FAILED_KINDS", "input_manifest", "failed_frame"]

#: Manifest problems that leave an image out (the others, e.g. "no label", keep the row).
FAILED_KINDS = ("unreadable", "mode", "not_an_image", "missing_image", "csv")


def input_manifest(inputs, progress: bool = False, store=None,
                   allow_empty: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manifest of ``inputs`` (files, folders, CSVs, or a manifest DataFrame) and the rows of files
    that could not be used (``path, sha256, subject, status, p_all, pred``); file checks are cached in
    ``store``. With ``allow_empty``, inputs none of which is usable give an empty manifest and their
    failed rows instead of an error."""
    if isinstance(inputs, pd.DataFrame):
        missing = {"path", "sha256"} - set(inputs.columns)
        if missing:
            raise BlastscanError("manifest", f"lacks column(s) {', '.join(sorted(missing))}")
        return inputs.reset_index(drop=True), failed_frame([])
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    manifest = build_manifest([str(p) for p in inputs], progress=progress, cache=inspect_cache(store),
                              allow_empty=allow_empty)
    bad = [p for p in manifest.problems if p.kind in FAILED_KINDS]
    rows = [{"path": p.path, "sha256": "", "subject": parse_cnmc_name(os.path.basename(p.path))[0] or "",
             "status": p.reason.removesuffix(" (left out)")} for p in bad]
    return manifest.df, failed_frame(rows)


def failed_frame(rows: list[dict]) -> pd.DataFrame:
    """Scoring rows for files that could not be used: NaN ``p_all``, empty ``pred``."""
    df = pd.DataFrame(rows, columns=["path", "sha256", "subject", "status"])
    df["p_all"] = np.nan
    df["pred"] = ""
    return df
