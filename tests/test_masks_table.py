"""End-to-end: `blastscan masks` contact sheets and `blastscan extract --out` feature tables on real cells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def _blastscan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "blastscan.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture(scope="module")
def few_cells(sample_root, tmp_path_factory) -> Path:
    """A CSV of 8 real sample cells, both classes."""
    paths = sorted(sample_root.rglob("*.png")) + sorted(sample_root.rglob("*.bmp"))
    alls = [p for p in paths if p.stem.endswith("_all")][:4]
    hems = [p for p in paths if p.stem.endswith("_hem")][:4]
    out = tmp_path_factory.mktemp("cells") / "cells.csv"
    pd.DataFrame({"path": [str(p) for p in alls + hems],
                  "label": ["all"] * len(alls) + ["hem"] * len(hems)}).to_csv(out, index=False)
    return out


def test_masks_draws_a_sheet_of_both_classes(few_cells, tmp_path):
    out = tmp_path / "sheet.png"
    r = _blastscan("masks", few_cells, "--out", out, "--n", 6, "--columns", 3, "--store", tmp_path / "st", "-q")
    assert r.returncode == 0, r.stderr
    assert "6 cells" in r.stdout and "median N:C" in r.stdout
    with Image.open(out) as im:
        assert im.size[0] > 3 * 100 and im.size[1] > 2 * 100
        colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    from blastscan.report.masks import CELL_RGB, NUCLEUS_RGB

    assert CELL_RGB in colours and NUCLEUS_RGB in colours  # both outlines are drawn


def test_masks_of_a_scored_csv_label_each_tile_with_its_call_and_probability(few_cells, tmp_path):
    from blastscan.dataset import build_manifest
    from blastscan.report.masks import masks_sheet, with_scores

    cells = pd.read_csv(few_cells)
    scored = tmp_path / "predictions.csv"  # the columns `blastscan score` writes
    p = np.linspace(0.05, 0.95, len(cells))
    pd.DataFrame({"path": cells["path"], "sha256": "", "subject": "", "p_all": p,
                  "pred": np.where(p >= 0.5, "all", "hem"), "status": "ok"}).to_csv(scored, index=False)
    manifest = build_manifest(str(scored), progress=False)
    result = masks_sheet(with_scores(manifest.df, [str(scored)]), tmp_path / "s.png", n=len(cells))
    got = result.cells.set_index("path")
    want = dict(zip(cells["path"], p))
    assert set(got.index) == set(want)
    for path, row in got.iterrows():
        assert row["p_all"] == pytest.approx(want[path]) and row["call"] == ("all" if want[path] >= 0.5 else "hem")
    # a dataset (no scores) keeps its labels and no call
    plain = masks_sheet(build_manifest(str(few_cells), progress=False).df, tmp_path / "d.png", n=4)
    assert (plain.cells["call"] == "").all() and set(plain.cells["label"]) == {"all", "hem"}


def test_view_and_masks_draw_outlines_in_the_same_colours():
    from pathlib import Path as P

    from blastscan.view import detail as view_detail
    from blastscan.report.masks import CELL_RGB, NUCLEUS_RGB

    css = (P(view_detail.__file__).resolve().parent / "static" / "style.css").read_text()
    for cls, rgb in (("cell", CELL_RGB), ("nucleus", NUCLEUS_RGB)):
        assert f".sw.{cls} {{ background: #{bytes(rgb).hex()}; }}" in css
    assert view_detail.CELL_RGB == CELL_RGB and view_detail.NUCLEUS_RGB == NUCLEUS_RGB


@pytest.mark.parametrize("args, message", [
    (["--subjects", "nobody"], "--subjects: not in the dataset: nobody"),
    (["--n", "0"], "--n: must be at least 1"),
])
def test_masks_bad_options_give_one_line(few_cells, tmp_path, args, message):
    r = _blastscan("masks", few_cells, "--out", tmp_path / "s.png", "--store", tmp_path / "st", "-q", *args)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {message}"
    r = _blastscan("masks", few_cells, "--out", tmp_path / "s.jpg", "--store", tmp_path / "st", "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "PNG" in r.stderr


@pytest.mark.parametrize("suffix", [".csv", pytest.param(".parquet", marks=pytest.mark.slow)])
def test_extract_writes_the_feature_table(few_cells, tmp_path, suffix):
    out = tmp_path / f"features{suffix}"
    r = _blastscan("extract", few_cells, "-f", "shape,chromatin", "--store", tmp_path / "st", "-j", 1, "-q",
                   "--out", out)
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    from blastscan.features.families import chromatin, shape

    assert list(t.columns[:6]) == ["path", "sha256", "subject", "label", "split", "status"]
    assert list(t.columns[6:]) == shape.FEATURE_NAMES + chromatin.FEATURE_NAMES
    assert len(t) == 8 and set(t["label"]) == {"all", "hem"}
    ok = t["status"] == "ok"
    assert t.loc[ok, shape.FEATURE_NAMES].notna().all().all()
    assert (t.loc[ok, "shape_cell_area"] > 1500).all()
    r = _blastscan("extract", few_cells, "-f", "shape", "--store", tmp_path / "st", "-q", "--out", tmp_path / "t.xlsx")
    assert r.returncode == 2 and "parquet or .csv" in r.stderr
