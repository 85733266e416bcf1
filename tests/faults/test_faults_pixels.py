"""Issue 24: one pixel budget for score and view, checked from the header before decoding; view gives
score's size warning; hand-edited inspected.json entries are re-read, not a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from blastscan.dataset import images

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _png(path, w, h):
    Image.new("RGB", (w, h), (200, 100, 200)).save(path)  # one colour: a small file of many pixels
    return path


def test_the_budget_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    big = _png(tmp_path / "big.png", 7000, 7000)
    assert big.stat().st_size < 400_000
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or real_load(self))
    res = images.inspect_file(str(big))
    assert res.problem is not None and "7000x7000 pixels, over the 4,000,000-pixel limit" in res.problem.reason
    assert not decoded
    monkeypatch.setenv(images.PIXEL_BUDGET_ENV, "60000000")  # raised (never above the hard ceiling)
    assert images.pixel_budget() == images.MAX_PIXELS
    monkeypatch.setenv(images.PIXEL_BUDGET_ENV, "lots")
    with pytest.raises(images.BlastscanError, match="expected a number of pixels"):
        images.pixel_budget()


@pytest.mark.slow
def test_score_refuses_over_budget_and_max_pixels_raises_it(tmp_path, sample_root):
    from blastscan.bundle import save_bundle
    from blastscan.dataset import build_manifest
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.extract import extract
    from blastscan.pipelines.train import train_bundle

    manifest = build_manifest(sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0").df
    extract(manifest, ["size"], tmp_path / "store", jobs=1, progress=False)
    bundle = save_bundle(train_bundle(manifest, "size", "logreg", tmp_path / "store", progress=False,
                                      settings=EvalSettings(inner_folds=2)), tmp_path / "m.joblib")
    cells = tmp_path / "cells"
    cells.mkdir()
    real = Image.open(manifest["path"].iloc[0]).convert("RGB")
    real.save(cells / "cell.png")
    real.resize((2100, 2100)).save(cells / "huge.png")  # a real cell, 4.4 megapixels

    def run(*extra):
        res = subprocess.run([sys.executable, "-m", "blastscan.cli", "score", str(bundle), str(cells), "-o",
                              str(tmp_path / "p.csv"), "-q", "-j", "1", *extra], capture_output=True, text=True,
                             env=ENV, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return dict(pd.read_csv(tmp_path / "p.csv", keep_default_na=False)[["path", "status"]].values)

    st = run()
    assert "2100x2100 pixels, over the 4,000,000-pixel limit" in st[str(cells / "huge.png")]
    assert st[str(cells / "cell.png")] == "ok"
    st = run("--max-pixels", "5000000")
    assert st[str(cells / "huge.png")].startswith("ok (warning: 2100x2100 px")  # scored, with the size warning


def test_view_refuses_over_budget_with_score_s_words_and_warns_as_score_does():
    from blastscan.bundle.scoring import flag_odd_sizes
    from blastscan.view.access import too_many_pixels

    buf = io.BytesIO()
    Image.new("RGB", (2500, 2000)).save(buf, format="PNG")
    assert too_many_pixels(buf.getvalue()) == images.over_pixel_budget(2500, 2000)
    rows = pd.DataFrame({"status": ["ok"], "width": [1900], "height": [20]})
    assert flag_odd_sizes(rows)["status"][0] == f"ok (warning: {images.odd_cell_size(1900, 20)})"


@pytest.mark.parametrize("content", [{"version": 1, "entries": []}, [], {"version": 1, "entries": {"x": 5}},
                                     "text", {"version": 1, "entries": {"P": ["k", "not five"]}}])
def test_a_hand_edited_inspected_json_is_re_read_not_a_traceback(tmp_path, content):
    cell = _png(tmp_path / "c.png", 40, 40)
    cache = tmp_path / "inspected.json"
    text = json.dumps(content).replace('"P"', json.dumps(str(cell)))
    if '"k"' in text:  # a valid stat key with a malformed result
        text = text.replace('"k"', json.dumps(images._stat_key(str(cell))))
    cache.write_text(text)
    (res,) = images.inspect_files([str(cell)], jobs=1, progress=False, cache=cache)
    assert res.problem is None and (res.width, res.height) == (40, 40)
