"""Issue 24: a full disk is one line naming the path (extract, compare --out, score -o, train --out); a
compare run folder is written whole (temp folder, renamed), replaced whole on a rerun, locked against a
second writer; export refuses an incomplete run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blastscan.errors import BlastscanError
from blastscan.pipelines.runrecord import INCOMPLETE_MARK, run_dir_lock

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
BLASTSCAN = [sys.executable, "-m", "blastscan.cli"]


@pytest.fixture
def cells(sample_root) -> Path:
    return sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0"


def _run(*args, timeout=600):
    return subprocess.run([*BLASTSCAN, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def _compare(cells, out, store, *extra):
    return _run("compare", cells, "-f", "size", "-c", "logreg", "--ensemble", "none", "--out", out, "--store", store,
                "-q", "-j", "1", *extra)


def _one_line_error(res, *words):
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert str(w) in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    """A real, tiny tmpfs (root only): writes into it fail with ENOSPC."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()

    def mount(size_kb: int) -> Path:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_disk_full_is_one_line_naming_the_path_and_leaves_nothing_half_written(full_disk, cells, tmp_path):
    store = tmp_path / "store"
    mnt = full_disk(24)
    res = _run("extract", cells, "-f", "size,shape", "--store", mnt / "store", "-q", "-j", "1")
    line = _one_line_error(res, mnt / "store", "No space left on device")
    assert ".parquet" in line  # the part that could not be written
    assert not list((mnt / "store").rglob("*.tmp"))
    # compare --out on a full disk: one line naming --out, no half run folder, no temp folder left
    mnt = full_disk(64)
    res = _compare(cells, mnt / "run", store)
    _one_line_error(res, f"--out {mnt / 'run'}", "No space left on device")
    assert not (mnt / "run").exists() and not [p for p in mnt.iterdir() if p.name.endswith(".tmp")]
    # train --out and score -o
    mnt = full_disk(8)
    res = _run("train", cells, "-f", "size", "-c", "logreg", "--store", store, "--out", mnt / "m.joblib", "-q")
    _one_line_error(res, mnt / "m.joblib", "No space left on device")
    assert not [p for p in mnt.iterdir() if not p.name.startswith(".")]
    res = _run("train", cells, "-f", "size", "-c", "logreg", "--store", store, "--out", tmp_path / "m.joblib", "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    mnt = full_disk(4)
    res = _run("score", tmp_path / "m.joblib", cells, "--store", store, "-o", mnt / "p.csv", "-q")
    _one_line_error(res, mnt / "p.csv", "No space left on device")


@pytest.mark.slow
def test_rerun_replaces_the_run_folder_whole_and_a_non_run_folder_is_refused(cells, tmp_path):
    store, out = tmp_path / "store", tmp_path / "run"
    assert _compare(cells, out, store).returncode == 0
    (out / "left-from-an-older-run.csv").write_text("x\n")
    first = json.loads((out / "run.json").read_text())["started"]
    res = _compare(cells, out, store, "--seed", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "left-from-an-older-run.csv").exists()
    assert json.loads((out / "run.json").read_text())["seed"] == 3 and (out / "report.html").is_file()
    assert first and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    _one_line_error(_compare(cells, other, store), f"--out {other}", "not a compare run folder")
    assert (other / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_second_compare_into_the_same_out_fails_clearly(cells, tmp_path):
    out = tmp_path / "run"
    with run_dir_lock(out):  # as a running compare holds it
        res = _compare(cells, out, tmp_path / "store")
    _one_line_error(res, f"--out {out}", "another compare is writing this run folder")
    assert not out.exists()
    with run_dir_lock(out):  # free again once released
        pass


def test_run_dir_lock_is_exclusive(tmp_path):
    with run_dir_lock(tmp_path / "run"):
        with pytest.raises(BlastscanError, match="another compare is writing"):
            with run_dir_lock(tmp_path / "run"):
                pass


def test_export_refuses_an_incomplete_run(tmp_path):
    from blastscan.pipelines.export import read_run

    d = tmp_path / ".run.123.tmp"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"configs": []}))
    (d / INCOMPLETE_MARK).write_text("")
    with pytest.raises(BlastscanError, match="incomplete compare run"):
        read_run(d)
    (d / INCOMPLETE_MARK).unlink()
    (d / "run.json").write_text("[]")
    with pytest.raises(BlastscanError, match="not a compare run record"):
        read_run(d)
