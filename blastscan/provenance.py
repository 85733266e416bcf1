"""Provenance of a run or a model: library versions, data hash, config hash, code revision, time.

Everything here is cheap and import-light (versions come from package metadata, never by importing
TensorFlow), so run records and bundles can always say what produced them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from blastscan import __version__

__all__ = [
    "LIBRARIES",
    "library_versions",
    "manifest_hash",
    "config_hash",
    "git_revision",
    "timestamp",
    "provenance",
    "to_jsonable",
]

# Distribution names to report; alternatives (``a|b``) are tried in order and reported under the first.
LIBRARIES = (
    "blastscan",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-image",
    "xgboost|xgboost-cpu",
    "tensorflow|tensorflow-cpu",
    "keras",
    "joblib",
    "pyarrow",
    "matplotlib",
    "pillow",
)


def library_versions(libraries=LIBRARIES) -> dict[str, str | None]:
    """Installed versions of the main libraries (``None`` when not installed), plus Python's.

    Read from package metadata, so nothing heavy is imported.
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for spec in libraries:
        names = spec.split("|")
        version = None
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
        out[names[0]] = version
    return out


def _cell(value: Any) -> str:
    # pandas 3 turns None into NaN/NA in string columns: all missing values hash the same, as "".
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def manifest_hash(df: pd.DataFrame) -> str:
    """sha256 of the labelled content of a manifest, independent of paths and row order.

    The hash covers the sorted ``(sha256, label, group)`` rows, one ``sha256\\tlabel\\tgroup\\n`` line
    each (a missing label or group is the empty string): two manifests hash the same exactly when they
    hold the same images with the same labels and the same split units, wherever the files live.
    """
    cols = [c for c in ("sha256", "label", "group") if c in df.columns]
    if "sha256" not in cols:
        raise ValueError("manifest has no sha256 column")
    rows = sorted(
        "\t".join(_cell(v) for v in values)
        for values in zip(*(df[c].tolist() if c in df.columns else [None] * len(df) for c in ("sha256", "label", "group")))
    )
    h = hashlib.sha256()
    for line in rows:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """``obj`` with paths, numpy scalars/arrays, sets and tuples turned into plain JSON types, and NaN and
    infinities (which JSON has not) into None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = sorted(obj, key=str) if isinstance(obj, set) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):  # NaN and infinities are not JSON
        return None
    return obj


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys), e.g. a run's or a model's settings."""
    text = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def git_revision(path: str | Path | None = None) -> str | None:
    """The git commit of the blastscan checkout (``+dirty`` when it has local changes), or ``None``.

    ``None`` for an installed (non-git) copy or when git is unavailable.
    """
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        suffix = "+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return rev.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return None


def timestamp() -> str:
    """The current time, UTC, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def provenance(manifest_df: pd.DataFrame | None = None, config: Any = None) -> dict[str, Any]:
    """One dict with everything above: versions, code revision, time, and hashes of data and config."""
    out: dict[str, Any] = {
        "blastscan_version": __version__,
        "git_revision": git_revision(),
        "created": timestamp(),
        "platform": platform.platform(),
        "versions": library_versions(),
    }
    if manifest_df is not None:
        out["manifest_sha256"] = manifest_hash(manifest_df)
        out["n_images"] = int(len(manifest_df))
    if config is not None:
        out["config"] = to_jsonable(config)
        out["config_sha256"] = config_hash(config)
    return out
