"""The feature store: Parquet tables per extractor identity, keyed by image sha256.

Layout of a store folder::

    STORE/<identity>/meta.json             extractor description + feature names (written once)
    STORE/<identity>/part-*.parquet        feature rows: ``sha256`` + one float32 column per feature
    STORE/<identity>/fail-*.parquet        images that could not be featurised: ``sha256, reason``

Every part is written to a temporary name, fsynced, renamed into place and its folder fsynced, so a
reader never sees half a file, an interrupted run keeps every chunk it finished and a power cut leaves
no empty part. Each part carries the sha256 of its content in its Parquet metadata
(:data:`CHECKSUM_KEY`), checked (with its columns and finite values) the first time a process reads it:
a damaged part is one error naming it, never rows read back wrong. Parts written before
checksums existed are still read; their columns and values are checked. Rows with NaN or inf values are
never written: they are recorded as failures with that reason. Parts have unique names, so concurrent writers
never touch the same file; :meth:`FeatureStore.compact` merges parts under a file lock. Rows are
keyed by content (sha256), so the same image under two paths is computed once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from blastscan._io import atomic_path, atomic_write_bytes, check_writable_dir, remove_stale_temp
from blastscan.errors import BlastscanError

__all__ = ["CHECKSUM_KEY", "NONFINITE_REASON", "FeatureStore", "ARRAY_LAYOUT"]

#: Parquet schema-metadata key holding the sha256 of a part's content (see :func:`content_sha256`).
CHECKSUM_KEY = b"blastscan.content_sha256"
NONFINITE_REASON = "non-finite feature values (NaN or inf); not stored"
_REPAIR_HINT = ("run `blastscan extract --repair` (it deletes damaged parts; their rows are computed again) or "
                "delete this file and run extract again")

#: Table layout for very wide tables (block activations): ``sha256`` + ``values``, one fixed-size binary cell
#: of float16 per row, declared by the extractor description's ``storage`` key. Other tables: one float32
#: column per feature.
ARRAY_LAYOUT = "float16-array"


class FeatureStore:
    """A folder of feature tables, one per extractor identity.

    Parameters
    ----------
    root : path
        The store folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._verified: set[tuple] = set()  # parts checked by this instance: (path, size, mtime, inode)

    # -- layout -------------------------------------------------------------------------------
    def _dir(self, identity: str) -> Path:
        return self.root / identity

    def identities(self) -> list[str]:
        """Identities that have a table in this store."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "meta.json").is_file())

    def meta(self, identity: str) -> dict | None:
        """The ``meta.json`` of a table, or ``None`` when the table does not exist."""
        path = self._dir(identity) / "meta.json"
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BlastscanError(str(path), f"unreadable store metadata ({exc})") from None
        names = meta.get("feature_names") if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise BlastscanError(str(path), "not a feature-table description (expected an object with a list of "
                                            "feature_names); delete this table's folder and run extract again")
        return meta

    def ensure_table(self, description: Mapping, feature_names: Sequence[str]) -> str:
        """Create the table for an extractor (``description`` from ``Extractor.describe()``).

        Refuses when a table of the same identity holds other feature names: that means an extractor
        changed its output without a version bump.
        """
        identity = description["identity"]
        meta = {"feature_names": list(feature_names), "extractor": dict(description), "created": time.time()}
        existing = self.meta(identity)
        remove_stale_temp(self._dir(identity))  # a killed writer's half parts (best effort)
        if existing is not None:
            if existing["feature_names"] != list(feature_names):
                raise BlastscanError(
                    str(self._dir(identity)),
                    "holds different feature names for the same extractor identity; "
                    "the extractor changed without a version bump (use another --store or delete this table)",
                )
            return identity
        self.check_writable(identity, "it has no table for this extractor yet")
        atomic_write_bytes(self._dir(identity) / "meta.json", json.dumps(meta, indent=2).encode())
        return identity

    def check_writable(self, identity: str, why: str) -> None:
        """Raise a one-line :class:`BlastscanError` naming the store when a table cannot be written.

        A read-only store is still read (every feature it holds is reused); it is refused up front only
        when there is something to write (``why`` says what), never after the work is done.
        """
        try:
            check_writable_dir(self._dir(identity), "--store")
        except BlastscanError as exc:
            raise BlastscanError(f"feature store {self.root}", f"is not writable ({exc.why}) and {why}; the "
                                 "features it holds can be reused, new ones need a writable --store") from None

    @contextlib.contextmanager
    def _lock(self, identity: str):
        d = self._dir(identity)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _parts(self, identity: str, prefix: str) -> list[Path]:
        d = self._dir(identity)
        if not d.is_dir():
            return []
        return sorted(d.glob(f"{prefix}-*.parquet"))

    def _read_part(self, path: Path, identity: str, prefix: str, columns=None) -> pa.Table:
        """One part, checked the first time this instance reads it: readable, its checksum (when it has
        one), its columns and (feature parts) finite values. Raises a one-line error naming the part."""
        st = os.stat(path)  # FileNotFoundError: a compaction removed it; the caller lists again
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key in self._verified:
            return pq.read_table(path, columns=columns)
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise
        except Exception as exc:  # damaged pages, footer, or not Parquet at all
            raise BlastscanError(str(path), f"damaged feature-store part, cannot be read "
                                            f"({type(exc).__name__}: {str(exc)[:120]}); {_REPAIR_HINT}") from None
        _check_part(path, table, self._expected_columns(identity, prefix))
        self._verified.add(key)
        return table.select(columns) if columns is not None else table

    def _expected_columns(self, identity: str, prefix: str) -> list[str]:
        if prefix == "fail":
            return ["sha256", "reason"]
        meta = self.meta(identity)
        if meta and _layout(meta) == ARRAY_LAYOUT:
            return ["sha256", "values"]
        return ["sha256", *(meta["feature_names"] if meta else [])]

    def _read_parts(self, identity: str, prefix: str, columns=None) -> pd.DataFrame | None:
        # A compaction may delete a part between listing and reading; list again when that happens.
        for _ in range(5):
            frames = []
            try:
                for p in self._parts(identity, prefix):
                    frames.append(self._read_part(p, identity, prefix, columns).to_pandas())
            except FileNotFoundError:
                continue
            if not frames:
                return None
            df = pd.concat(frames, ignore_index=True)
            return df.drop_duplicates(subset="sha256", keep="last")
        raise BlastscanError(str(self._dir(identity)), "store kept changing while being read; try again")

    # -- writing ------------------------------------------------------------------------------
    def write_chunk(
        self,
        identity: str,
        shas: Sequence[str],
        features: np.ndarray,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        """Publish one chunk of rows (and failures) atomically as new part files."""
        meta = self.meta(identity)
        if meta is None:
            raise BlastscanError(str(self._dir(identity)), "no such table; call ensure_table first")
        names = meta["feature_names"]
        stamp = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
        d = self._dir(identity)
        failures = dict(failures or {})
        if len(shas):
            features = np.asarray(features, dtype=np.float32).reshape(len(shas), len(names))
            finite = np.isfinite(features).all(axis=1)
            if not finite.all():  # never stored: a NaN row would be reused by every later run
                failures.update({s: NONFINITE_REASON for s, ok in zip(shas, finite) if not ok})
                shas, features = [s for s, ok in zip(shas, finite) if ok], features[finite]
        if len(shas):
            table = (_array_table(shas, features) if _layout(meta) == ARRAY_LAYOUT
                     else _feature_table(shas, features, names))
            with atomic_path(d / f"part-{stamp}.parquet") as tmp:
                _write_table(table, tmp)
        if failures:
            fdf = pd.DataFrame({"sha256": list(failures), "reason": [str(v) for v in failures.values()]})
            with atomic_path(d / f"fail-{stamp}.parquet") as tmp:
                _write_table(pa.Table.from_pandas(fdf, preserve_index=False), tmp)

    def compact(self, identity: str, min_parts: int = 2) -> None:
        """Merge all parts of a table into one file when it has ``min_parts`` or more (under a lock;
        readers stay consistent). ``extract`` passes ``compute.COMPACT_MIN_PARTS``: a few new rows (a
        ``score`` of some cells) do not rewrite a large table; the parts are merged once they add up."""
        with self._lock(identity):
            for prefix in ("part", "fail"):
                parts = self._parts(identity, prefix)
                if len(parts) < max(2, min_parts):
                    continue
                if prefix == "fail":
                    df = self._read_parts(identity, prefix)
                    done = self.known_shas(identity, include_failures=False)
                    table = pa.Table.from_pandas(df[~df["sha256"].isin(done)], preserve_index=False)
                else:  # in Arrow, column by column: a 2048-wide table through pandas costs seconds
                    table = self._merged_parts([self._read_part(p, identity, prefix) for p in parts])
                stamp = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
                with atomic_path(self._dir(identity) / f"{prefix}-{stamp}.parquet") as tmp:
                    _write_table(table, tmp)
                for p in parts:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

    @staticmethod
    def _merged_parts(tables: list["pa.Table"]) -> "pa.Table":
        """The rows of checked parts as one table, the last part's row kept for a sha256 found twice."""
        schema = tables[-1].schema.remove_metadata()
        table = pa.concat_tables([t.replace_schema_metadata(None).select(schema.names).cast(schema) for t in tables])
        shas = table.column("sha256").to_numpy(zero_copy_only=False)
        _, first_from_end = np.unique(shas[::-1], return_index=True)
        keep = np.sort(len(shas) - 1 - first_from_end)
        return table.take(pa.array(keep)) if len(keep) < len(shas) else table

    def repair(self) -> list[tuple[str, str]]:
        """Delete every part (of every table) that fails its check, and tables whose ``meta.json`` is not
        a table description; their rows are computed again by the next extract. Returns ``(path, why)``
        for each deletion."""
        removed: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return removed
        for d in sorted(p for p in self.root.iterdir() if (p / "meta.json").is_file()):
            try:
                self.meta(d.name)
            except BlastscanError as exc:
                shutil.rmtree(d)
                removed.append((str(d), exc.why or str(exc)))
                continue
            with self._lock(d.name):
                for prefix in ("part", "fail"):
                    for p in self._parts(d.name, prefix):
                        try:
                            self._read_part(p, d.name, prefix)
                        except FileNotFoundError:
                            continue
                        except BlastscanError as exc:
                            p.unlink()
                            removed.append((str(p), (exc.why or "").split(";")[0]))
        return removed

    # -- reading ------------------------------------------------------------------------------
    def known_shas(self, identity: str, include_failures: bool = True) -> set[str]:
        """sha256 of every image with stored features (and, by default, stored failures)."""
        out: set[str] = set()
        df = self._read_parts(identity, "part", columns=["sha256"])
        if df is not None:
            out.update(df["sha256"])
        if include_failures:
            fdf = self._read_parts(identity, "fail", columns=["sha256"])
            if fdf is not None:
                out.update(fdf["sha256"])
        return out

    def failures(self, identity: str) -> dict[str, str]:
        """sha256 -> reason for images this extractor could not featurise (and never later did)."""
        fdf = self._read_parts(identity, "fail")
        if fdf is None:
            return {}
        done = self.known_shas(identity, include_failures=False)
        return {s: r for s, r in zip(fdf["sha256"], fdf["reason"]) if s not in done}

    def forget_failures(self, identity: str) -> None:
        """Drop recorded failures so the next extract retries them."""
        with self._lock(identity):
            for p in self._parts(identity, "fail"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def read(self, identity: str, shas: Iterable[str] | None = None) -> pd.DataFrame:
        """Features as a DataFrame indexed by sha256 (rows for ``shas`` that exist; all if None).

        Columns are the table's feature names in their stored order (float32).
        """
        meta = self.meta(identity)
        if meta is None:
            raise BlastscanError(str(self._dir(identity)), "no such feature table")
        names = meta["feature_names"]
        if _layout(meta) == ARRAY_LAYOUT:
            return self._read_array(identity, names, shas)
        df = self._read_parts(identity, "part")
        if df is None:
            return pd.DataFrame(columns=names, dtype=np.float32).rename_axis("sha256")
        df = df.set_index("sha256")[names]
        if shas is not None:
            wanted = pd.Index(pd.unique(pd.Series(list(shas), dtype=object)))
            df = df.loc[wanted.intersection(df.index)]
        return df

    def _read_array(self, identity: str, names: list[str], shas) -> pd.DataFrame:
        """A ``float16-array`` table as a float16 DataFrame (one block: no per-column cost)."""
        df = self._read_parts(identity, "part")
        if df is None:
            return pd.DataFrame(np.zeros((0, len(names)), np.float16), columns=names).rename_axis("sha256")
        df = df.set_index("sha256")
        if shas is not None:
            wanted = pd.Index(pd.unique(pd.Series(list(shas), dtype=object)))
            df = df.loc[wanted.intersection(df.index)]
        mat = np.frombuffer(b"".join(df["values"].tolist()), dtype=np.float16).reshape(len(df), len(names))
        return pd.DataFrame(mat, index=df.index, columns=names, copy=False)


def _layout(meta: Mapping) -> str:
    return str((meta.get("extractor") or {}).get("storage") or "columns")


def _array_table(shas: Sequence[str], features: np.ndarray) -> pa.Table:
    """``sha256`` then ``values``: each row's features as one fixed-size binary cell of float16."""
    half = np.ascontiguousarray(features, dtype=np.float16)
    width = half.shape[1] * 2
    values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(half), [None, pa.py_buffer(half.tobytes())])
    return pa.Table.from_arrays([pa.array(list(shas), pa.string()), values], names=["sha256", "values"])


def _feature_table(shas: Sequence[str], features: np.ndarray, names: Sequence[str]) -> pa.Table:
    """``sha256`` then one float32 column per feature, built in Arrow (no 2048-column DataFrame)."""
    cols = np.ascontiguousarray(features.T)
    return pa.Table.from_arrays([pa.array(list(shas), pa.string()), *(pa.array(c) for c in cols)],
                                names=["sha256", *names])


def content_sha256(table: pa.Table) -> str:
    """sha256 over a table's column names and values (strings joined by NUL, numbers as their bytes):
    what a part's checksum covers. Independent of the Parquet encoding, so it is checked after decoding."""
    h = hashlib.sha256()
    for name, col in zip(table.column_names, table.columns):
        h.update(name.encode() + b"\0" + str(col.type).encode() + b"\0")
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            h.update("\0".join("\1" if v is None else v for v in col.to_pylist()).encode())
        elif pa.types.is_binary(col.type) or pa.types.is_fixed_size_binary(col.type):  # float16-array rows
            h.update(b"".join(b"" if v is None else v for v in col.to_pylist()))
        else:
            h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
    return h.hexdigest()


def _check_part(path: Path, table: pa.Table, expected: list[str]) -> None:
    """Raise a one-line error naming ``path`` when its checksum, columns or values are wrong."""
    recorded = (table.schema.metadata or {}).get(CHECKSUM_KEY)
    if recorded is not None and recorded.decode(errors="replace") != content_sha256(table):
        raise BlastscanError(str(path), f"damaged feature-store part (its content does not match the checksum "
                                        f"recorded when it was written); {_REPAIR_HINT}")
    have = set(table.column_names)  # a set: a 2048-wide part checked in milliseconds
    missing = [c for c in expected if c not in have]
    if missing:
        raise BlastscanError(str(path), f"damaged feature-store part (no column {missing[0]!r}"
                                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                                        + f"); {_REPAIR_HINT}")
    if table.column("sha256").null_count:
        raise BlastscanError(str(path), f"damaged feature-store part (a row without sha256); {_REPAIR_HINT}")
    wanted = set(expected[1:])
    for name, col in zip(table.column_names, table.columns):
        if name in wanted and pa.types.is_floating(col.type):
            values = col.to_numpy()
            if not np.isfinite(values).all():
                raise BlastscanError(str(path), f"feature-store part holds NaN or inf values (column {name!r}); "
                                                f"{_REPAIR_HINT}")


def _write_table(table: pa.Table, path) -> None:
    """Write a part with its content checksum (fsync and rename are :func:`atomic_path`'s)."""
    meta = dict(table.schema.metadata or {})
    meta[CHECKSUM_KEY] = content_sha256(table).encode()
    # no dictionaries or statistics for 2048 float columns: 2.5x faster to write, and smaller
    pq.write_table(table.replace_schema_metadata(meta), path, use_dictionary=False, write_statistics=False)
