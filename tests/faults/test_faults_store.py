"""Issue 24, store faults: damaged parts are named (never read back as other values), NaN rows are never
stored, old parts without a checksum are still read, a killed writer's temp files are removed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blastscan.errors import BlastscanError
from blastscan.features.store import CHECKSUM_KEY, NONFINITE_REASON, FeatureStore

NAMES = ["f_a", "f_b", "f_c"]
DESC = {"identity": "fake@1", "name": "fake", "version": "1", "config": {}}
SHAS = [f"{i:064x}" for i in range(40)]


@pytest.fixture
def store(tmp_path):
    s = FeatureStore(tmp_path / "store")
    s.ensure_table(DESC, NAMES)
    return s


def _one_part(store) -> "os.PathLike":
    X = np.random.default_rng(0).normal(size=(len(SHAS), 3)).astype(np.float32)
    store.write_chunk("fake@1", SHAS, X)
    (part,) = store._parts("fake@1", "part")
    return part, X


def test_bit_flips_in_a_part_are_named_or_harmless_never_other_values(store, tmp_path):
    part, X = _one_part(store)
    good = part.read_bytes()
    assert CHECKSUM_KEY in pq.read_schema(part).metadata
    rng = np.random.default_rng(1)
    named = 0
    for pos in rng.choice(len(good), size=120, replace=False):
        bad = bytearray(good)
        bad[pos] ^= 1 << int(rng.integers(8))
        part.write_bytes(bytes(bad))
        fresh = FeatureStore(store.root)  # a new process: nothing verified yet
        try:
            got = fresh.read("fake@1")
            known = fresh.known_shas("fake@1")
        except BlastscanError as exc:
            assert str(part) in str(exc) and "delete this file" in str(exc)
            named += 1
            continue
        # a flip the reader does not see (e.g. in unused footer bytes) must leave every value as written
        assert known == set(SHAS)
        np.testing.assert_array_equal(got.loc[SHAS].to_numpy(), X)
    assert named > 60  # most bytes matter


def test_reused_check_reads_more_than_the_sha256_column(store):
    part, _ = _one_part(store)
    table = pq.read_table(part)
    cols = table.column("f_b").to_numpy().copy()
    cols[3] += 1.0  # a feature value changed, the sha256 column intact, the old checksum kept
    changed = table.set_column(2, "f_b", pa.array(cols))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(BlastscanError, match="does not match the checksum"):
        FeatureStore(store.root).known_shas("fake@1")


def test_part_with_a_missing_column_is_named(store):
    part, _ = _one_part(store)
    pq.write_table(pq.read_table(part).drop(["f_c"]).replace_schema_metadata(None), part)
    with pytest.raises(BlastscanError, match=r"no column 'f_c'.*delete this file") as exc:
        FeatureStore(store.root).known_shas("fake@1")
    assert str(part) in str(exc.value)


def test_old_part_without_checksum_is_read_and_its_nan_values_are_named(store):
    df = pd.DataFrame({"sha256": SHAS[:3], "f_a": np.float32([1, 2, 3]), "f_b": np.float32([4, 5, 6]),
                       "f_c": np.float32([7, 8, 9])})
    old = store.root / "fake@1" / "part-0-old.parquet"
    df.to_parquet(old, index=False)  # as the code before issue 24 wrote them: no checksum
    got = FeatureStore(store.root).read("fake@1")
    np.testing.assert_array_equal(got.loc[SHAS[1]].to_numpy(), [2, 5, 8])
    df.loc[1, "f_b"] = np.nan
    df.to_parquet(old, index=False)
    with pytest.raises(BlastscanError, match="NaN or inf values"):
        FeatureStore(store.root).read("fake@1")


def test_nan_rows_become_failures_with_their_reason_never_rows(store):
    X = np.ones((3, 3), np.float32)
    X[1, 2] = np.nan
    X[2, 0] = np.inf
    store.write_chunk("fake@1", SHAS[:3], X)
    assert set(store.read("fake@1").index) == {SHAS[0]}
    assert store.failures("fake@1") == {SHAS[1]: NONFINITE_REASON, SHAS[2]: NONFINITE_REASON}


def test_a_killed_writers_temp_files_are_removed_at_the_next_run(store):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    d = store.root / "fake@1"
    stale = d / f".part-1-a.parquet.{dead}.abc123.tmp"
    live = d / f".part-2-b.parquet.{os.getppid()}.def456.tmp"  # a running writer's: kept
    stale.write_bytes(b"PAR1 half")
    live.write_bytes(b"PAR1 half")
    FeatureStore(store.root).ensure_table(DESC, NAMES)
    assert not stale.exists() and live.exists()


def test_meta_json_that_is_not_a_table_description_is_one_line(store):
    (store.root / "fake@1" / "meta.json").write_text("{}")
    with pytest.raises(BlastscanError, match="not a feature-table description"):
        FeatureStore(store.root).ensure_table(DESC, NAMES)


def test_parts_are_fsynced_before_the_rename_and_their_folder_after(store, monkeypatch):
    from blastscan import _io

    events = []
    real_fsync, real_replace = _io.fsync_path, os.replace
    monkeypatch.setattr(_io, "fsync_path", lambda p: (events.append(("fsync", str(p))), real_fsync(p)))
    monkeypatch.setattr(_io.os, "replace", lambda a, b: (events.append(("rename", str(b))), real_replace(a, b)))
    store.write_chunk("fake@1", SHAS[:2], np.ones((2, 3), np.float32))
    (part,) = store._parts("fake@1", "part")
    kinds = [(k, p == str(part), p == str(part.parent)) for k, p in events]
    i = kinds.index(("rename", True, False))
    assert events[i - 1][0] == "fsync" and events[i - 1][1].endswith(".tmp")  # data first
    assert kinds[i + 1] == ("fsync", False, True)  # then the folder holding the new name


@pytest.mark.slow
def test_extract_and_compare_over_a_damaged_part_are_one_line_naming_it(sample_root, tmp_path):
    cells = sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "blastscan.cli", *map(str, args), "--store", tmp_path / "store",
                               "-q", "-j", "1"], capture_output=True, text=True, env=env, timeout=600)

    assert run("extract", cells, "-f", "size").returncode == 0
    part = sorted((tmp_path / "store").glob("size@*/part-*.parquet"))[0]  # one of them, under load
    table = pq.read_table(part)
    values = table.column(1).to_numpy().copy()
    values[0] = -values[0]  # one value changed, the file otherwise intact
    pq.write_table(table.set_column(1, table.column_names[1], pa.array(values)), part)
    for args in (("extract", cells, "-f", "size"),
                 ("compare", cells, "-f", "size", "-c", "logreg", "--out", tmp_path / "run")):
        res = run(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and str(part) in lines[0] and "extract --repair" in lines[0], res.stderr
    res = run("extract", cells, "-f", "size", "--repair")  # what the message says: the rows are computed again
    assert res.returncode == 0 and "failed 0" in res.stdout, res.stderr[-2000:]
    assert f"repair: deleted {part}" in res.stderr and not part.exists()
    fresh = FeatureStore(tmp_path / "store")
    ident = part.parent.name
    assert len(fresh.read(ident)) == len(fresh.known_shas(ident, include_failures=False)) > 0
    assert run("compare", cells, "-f", "size", "-c", "logreg", "--out", tmp_path / "run").returncode == 0


def test_repair_deletes_only_damaged_parts_and_bad_tables(store, tmp_path):
    part, _ = _one_part(store)
    store.write_chunk("fake@1", ["f" * 64], np.ones((1, 3), np.float32))
    good = [p for p in store._parts("fake@1", "part") if p != part]
    table = pq.read_table(part)
    values = table.column("f_a").to_numpy().copy()
    values[0] += 1  # another value under the old checksum
    pq.write_table(table.set_column(1, "f_a", pa.array(values)), part)
    other = FeatureStore(store.root)
    other.ensure_table({**DESC, "identity": "bad@1"}, NAMES)
    (store.root / "bad@1" / "meta.json").write_text("[]")
    removed = dict(FeatureStore(store.root).repair())
    assert set(removed) == {str(part), str(store.root / "bad@1")}
    assert [p for p in store._parts("fake@1", "part")] == good
    assert FeatureStore(store.root).known_shas("fake@1") == {"f" * 64}
    assert FeatureStore(store.root).repair() == []
