"""Feature store: round trips, atomic publication, compaction, failures, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from blastscan.errors import BlastscanError
from blastscan.features.store import FeatureStore

NAMES = ["f_a", "f_b", "f_c"]
DESC = {"identity": "fake@1", "name": "fake", "version": "1", "config": {}}


def _shas(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:062d}" for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = FeatureStore(tmp_path / "store")
    s.ensure_table(DESC, NAMES)
    return s


def test_round_trip_keeps_values_and_requested_order(store):
    shas = _shas("a", 5)
    X = np.arange(15, dtype=np.float32).reshape(5, 3)
    store.write_chunk("fake@1", shas, X)
    got = store.read("fake@1", [shas[3], shas[0]])
    assert list(got.columns) == NAMES
    np.testing.assert_array_equal(got.loc[shas[3]].to_numpy(), X[3])
    np.testing.assert_array_equal(got.loc[shas[0]].to_numpy(), X[0])
    assert store.known_shas("fake@1") == set(shas)


def test_read_of_unknown_rows_returns_only_known(store):
    store.write_chunk("fake@1", _shas("a", 2), np.ones((2, 3)))
    got = store.read("fake@1", _shas("a", 2) + _shas("z", 3))
    assert len(got) == 2


def test_changed_feature_names_under_same_identity_is_refused(store):
    with pytest.raises(BlastscanError, match="version bump"):
        store.ensure_table(DESC, NAMES + ["f_d"])


def test_failed_write_leaves_no_file(store, monkeypatch):
    import pyarrow.parquet as pq

    def boom(table, where, **k):  # half a file written, then the disk fills up
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        store.write_chunk("fake@1", _shas("a", 2), np.ones((2, 3)))
    leftovers = [p.name for p in (store.root / "fake@1").iterdir() if p.name not in ("meta.json",)]
    assert leftovers == []


def test_failures_are_recorded_and_superseded_by_later_success(store):
    a, b = _shas("a", 2)
    store.write_chunk("fake@1", [a], np.zeros((1, 3)), failures={b: "nucleus not found"})
    assert store.failures("fake@1") == {b: "nucleus not found"}
    assert b in store.known_shas("fake@1")
    assert b not in store.known_shas("fake@1", include_failures=False)
    store.write_chunk("fake@1", [b], np.ones((1, 3)))
    assert store.failures("fake@1") == {}
    store.forget_failures("fake@1")
    assert store.known_shas("fake@1") == {a, b}


def test_compaction_merges_parts_without_losing_rows(store):
    for k in range(4):
        store.write_chunk("fake@1", _shas(f"{k}", 3), np.full((3, 3), k, np.float32), failures={f"x{k}": "bad"})
    before = store.read("fake@1").sort_index()
    store.compact("fake@1")
    parts = list((store.root / "fake@1").glob("part-*.parquet"))
    assert len(parts) == 1
    pd.testing.assert_frame_equal(store.read("fake@1").sort_index(), before)
    assert len(store.failures("fake@1")) == 4


def test_compaction_waits_for_enough_parts_and_keeps_the_last_row_of_a_sha(store):
    shas = _shas("r", 3)
    store.write_chunk("fake@1", shas, np.zeros((3, 3), np.float32))
    store.write_chunk("fake@1", shas[:1], np.full((1, 3), 7, np.float32))  # the same image again, later
    store.compact("fake@1", min_parts=3)
    assert len(list((store.root / "fake@1").glob("part-*.parquet"))) == 2  # left alone: too few parts
    store.write_chunk("fake@1", _shas("s", 1), np.ones((1, 3), np.float32))
    before = store.read("fake@1")
    store.compact("fake@1", min_parts=3)
    assert len(list((store.root / "fake@1").glob("part-*.parquet"))) == 1
    after = store.read("fake@1")
    pd.testing.assert_frame_equal(after.sort_index(), before.sort_index())
    assert len(after) == 4 and (after.loc[shas[0]] == 7).all() and after.dtypes.eq(np.float32).all()


def _writer(root: str, prefix: str, n: int) -> None:
    s = FeatureStore(root)
    s.ensure_table(DESC, NAMES)
    for i in range(n):
        s.write_chunk("fake@1", [f"{prefix}{i:062d}"], np.full((1, 3), i, np.float32))
        if i % 5 == 0:
            s.compact("fake@1")


def test_concurrent_writers_do_not_corrupt_the_table(tmp_path):
    root = str(tmp_path / "store")
    ctx = mp.get_context("spawn")
    # the same keys from both writers (two runs over the same images): each row once, none lost
    procs = [ctx.Process(target=_writer, args=(root, "p", 20)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = FeatureStore(root)
    df = s.read("fake@1")
    assert len(df) == 20 and df.index.is_unique


def test_unreadable_part_is_named_in_the_error(store):
    store.write_chunk("fake@1", _shas("a", 1), np.ones((1, 3)))
    part = next((store.root / "fake@1").glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    with pytest.raises(BlastscanError, match=part.name):
        store.read("fake@1")
