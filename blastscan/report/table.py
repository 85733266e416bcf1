"""The per-cell feature table: one row per image, its identity and every feature of the chosen sets.

Like CellProfiler's per-object export: ``path, sha256, subject, label, split, status`` then the features
in column order, written atomically as Parquet or CSV. Cells a family could not featurise keep their row
(``status`` holds the reason, features are empty), so the table lists every cell of the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from blastscan._io import atomic_path
from blastscan.errors import BlastscanError
from blastscan.features.featureset import FeatureSet

__all__ = ["feature_table", "write_feature_table", "ID_COLUMNS"]

ID_COLUMNS = ["path", "sha256", "subject", "label", "split", "status"]


def feature_table(manifest_df: pd.DataFrame, feature_sets: Sequence[str] | str, store: str | os.PathLike, *,
                  extractor_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The table of ``manifest_df``'s images for ``feature_sets`` (read from ``store``; nothing is computed).

    Feature sets are joined column-wise (a family named twice appears once); ``status`` is ``ok`` or the
    reason(s) a set has no features for that image.
    """
    names = FeatureSet.union(feature_sets, extractor_options).names
    out = pd.DataFrame({
        "path": manifest_df["path"].astype(str).to_numpy(),
        "sha256": manifest_df["sha256"].to_numpy(),
        "subject": manifest_df["subject"].to_numpy() if "subject" in manifest_df else None,
        "label": manifest_df["label"].to_numpy() if "label" in manifest_df else None,
        "split": manifest_df["source_split"].to_numpy() if "source_split" in manifest_df else None,
    })
    status = pd.Series([""] * len(out))
    blocks = []
    for name in names:
        fm = FeatureSet(name, extractor_options or {}).read(manifest_df, store)
        block = pd.DataFrame(fm.X, columns=fm.feature_names, index=fm.rows["sha256"].to_numpy())
        block = block[~block.index.duplicated()]
        blocks.append(block.reindex(out["sha256"]).reset_index(drop=True))
        reasons = dict(zip(fm.dropped["sha256"], fm.dropped["reason"]))
        miss = out["sha256"].map(reasons).fillna("")
        status = status.where(miss == "", status.str.cat(miss, sep="; ").str.strip("; "))
    out["status"] = status.where(status != "", "ok").to_numpy()
    table = pd.concat([out] + blocks, axis=1)
    return table.loc[:, ~table.columns.duplicated()]


def write_feature_table(manifest_df: pd.DataFrame, feature_sets: Sequence[str] | str, store: str | os.PathLike,
                        out: str | os.PathLike, *, extractor_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Write :func:`feature_table` to ``out`` (``.parquet`` or ``.csv``, atomically); return the table."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise BlastscanError(str(out), "the feature table is written as .parquet or .csv: give one of those suffixes")
    table = feature_table(manifest_df, feature_sets, store, extractor_options=extractor_options)
    try:
        if not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            if suffix == ".parquet":
                table.to_parquet(tmp, index=False)
            else:
                table.to_csv(tmp, index=False, float_format="%.7g")
    except OSError as exc:
        raise BlastscanError(str(out), f"cannot write ({exc.strerror or exc})") from None
    return table


