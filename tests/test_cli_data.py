"""`blastscan data` as a user runs it: the installed command in a subprocess, on a small dataset built
here, on bad inputs (one-line error, exit code 2), and on the real C-NMC subset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blastscan.dataset import read_manifest
from test_dataset import make_cnmc, save_image  # tests/ is on sys.path (pytest rootdir conftest)

_EXE = Path(sys.executable).parent / "blastscan"
BLASTSCAN = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "blastscan.cli"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _blastscan(*args, timeout=120):
    return subprocess.run([*BLASTSCAN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_data_summary_manifest_and_problems_file(tmp_path):
    top = tmp_path / "cnmc"
    expected = make_cnmc(top)
    (top / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all" / "UID_11_9_9_all.png").write_bytes(b"broken")
    out, problems = tmp_path / "o" / "manifest.csv", tmp_path / "o" / "problems.txt"
    res = _blastscan("data", top, "--out", out, "--problems", problems, "-q")
    assert res.returncode == 0, res.stderr
    n_all = sum(v[0] == "all" for v in expected.values())
    n_hem = sum(v[0] == "hem" for v in expected.values())
    assert f"{len(expected)} images: {n_all} all, {n_hem} hem, 2 unlabelled" in res.stdout
    assert "C-NMC 2019 layout" in res.stdout
    assert re.search(r"^prelim\s+2\s+1\s+0\s+3$", res.stdout, re.M)  # split table row: all hem unlabelled total
    assert "UID_11_9_9_all.png" in res.stdout  # the corrupt file is named
    assert "Traceback" not in res.stderr
    df = read_manifest(out)
    assert len(df) == len(expected)
    lines = problems.read_text().splitlines()
    assert len(lines) == 3  # 2 CSV rows without an image + the corrupt file
    assert all(line.startswith("/") and ": " in line for line in lines)


def test_data_plain_class_folders(tmp_path):
    for label in ("all", "hem"):
        for i in range(3):
            save_image(tmp_path / "d" / label / f"{label}{i}.png")
    res = _blastscan("data", tmp_path / "d")
    assert res.returncode == 0, res.stderr
    assert "6 images: 3 all, 3 hem, 0 unlabelled" in res.stdout
    # no subject in these names: said, never "problems: none"
    assert "problems: none" not in res.stdout and "no subject" in res.stdout
    res = _blastscan("data", tmp_path / "d", "--subject-pattern", r"^(\w{3})")
    assert res.returncode == 0, res.stderr
    assert "problems: none" in res.stdout


@pytest.mark.parametrize("case", ["empty folder", "missing path", "only corrupt"])
def test_data_bad_input_is_one_line_and_exit_2(tmp_path, case):
    target = tmp_path / "ds"
    if case != "missing path":
        target.mkdir()
    if case == "only corrupt":
        (target / "all").mkdir()
        (target / "all" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    res = _blastscan("data", target, "-q")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert str(target) in err[0]


def test_data_does_not_import_tensorflow(tmp_path):
    save_image(tmp_path / "all" / "a.png")
    code = ("import sys; from blastscan.cli import main\n"
            f"main(['data', {str(tmp_path)!r}, '-q'], standalone_mode=False)\n"
            "print('TF' if 'tensorflow' in sys.modules else 'NO_TF')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("NO_TF")


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["", "C-NMC_Leukemia"])
def test_data_on_real_cnmc(cnmc_root, sub):
    import pandas as pd

    ref = pd.read_csv(cnmc_root / "manifest.csv", dtype=str)
    res = _blastscan("data", cnmc_root / sub if sub else cnmc_root, "-q")
    assert res.returncode == 0, res.stderr
    counts = ref["label"].value_counts()
    n_subj = ref.groupby("label")["subject"].nunique()
    prelim = int(ref["path"].str.contains("prelim_phase_data/").sum())
    assert f"{len(ref):,} images: {counts['all']:,} all, {counts['hem']:,} hem, 0 unlabelled" in res.stdout
    assert f"subjects: {n_subj['all']} all, {n_subj['hem']} hem" in res.stdout
    csv_rows = sum(1 for _ in open(next(cnmc_root.rglob("*prelim_phase_data_labels.csv")))) - 1
    assert f"prelim: {prelim} images labelled from" in res.stdout
    # the CSV rows whose images are not in the subset: said once, in one line with their count
    said = [ln for ln in res.stdout.splitlines() if f"{csv_rows - prelim:,} rows" in ln]
    assert len(said) == 1 and "prelim_phase_data_labels.csv" in said[0] and "not here" in said[0]
    assert ": listed in" not in res.stdout
