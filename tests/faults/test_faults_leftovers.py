"""Issue 24, leftovers: a local Dask cluster leaves no scratch folder (dask-scratch-space) behind; stale
temp files in store tables are removed (see test_faults_store)."""

from __future__ import annotations

import tempfile

import pytest


@pytest.mark.slow
def test_a_local_dask_cluster_leaves_no_scratch_folder(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from blastscan import parallel

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with parallel.session("local:1") as ex:
        assert sum(ex.map_unordered(abs, [(-1,), (-2,)])) == 3
        assert ex.scratch and ex.scratch.startswith(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no dask-scratch-space, no blastscan-dask-* folder
