"""Scoring: one CSV row per input (bad files with their reason), chunked streaming, the per-subject summary,
and the train / export / score commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from blastscan.cli import main
from blastscan.errors import BlastscanError
from blastscan.bundle import load_bundle, sidecar_path
from blastscan.bundle.scoring import subject_summary
from blastscan.pipelines.score import score, subjects_path
from test_bundle import cells, run_dir, trained  # noqa: F401  (shared module fixtures)


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "UID_7_1_1_all.bmp"
    corrupt.write_bytes(b"BM" + bytes(range(200)))  # a .bmp that is not a bitmap
    text = tmp_path / "notes.txt"
    text.write_text("not a cell")
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(black)  # readable, but no cell to segment
    return {"corrupt": corrupt, "text": text, "black": black}


def test_bad_files_are_reported_and_the_batch_finishes(cells, trained, bad_files, tmp_path):
    good = cells["paths"][:4]
    out = tmp_path / "pred.csv"
    result = score(trained["path"], [*good, *map(str, bad_files.values())], out, jobs=1, progress=False)
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["path", "sha256", "subject", "p_all", "pred", "status"]
    assert len(df) == 7 and result.n_images == 7
    status = dict(zip(df["path"], df["status"]))
    assert all(status[p] == "ok" for p in good)
    assert "unreadable" in status[str(bad_files["corrupt"])]
    assert "not an image file" in status[str(bad_files["text"])]
    assert status[str(bad_files["black"])].startswith("shape: ")  # featurisation failed, the family named
    bad = df[df["status"] != "ok"]
    assert (bad["p_all"] == "").all() and (bad["pred"] == "").all()
    assert (result.n_scored, result.n_failed) == (4, 3)
    # the corrupt file's subject comes from its C-NMC name; it counts as a cell of subject 7, not scored
    subj = pd.read_csv(subjects_path(out), dtype={"subject": str}).set_index("subject")
    assert (subj.loc["7", "n_cells"], subj.loc["7", "n_scored"]) == (1, 0)
    assert "could not be scored" in result.summary()


def test_scores_match_the_bundle_whatever_the_chunk_size(cells, trained, tmp_path):
    bundle = load_bundle(trained["path"])
    small = score(bundle, [str(cells["dataset"])], tmp_path / "small.csv", jobs=1, progress=False, chunk_images=5)
    whole = score(bundle, [str(cells["dataset"])], tmp_path / "whole.csv", jobs=1, progress=False)
    a = pd.read_csv(small.predictions_csv, dtype={"subject": str})
    b = pd.read_csv(whole.predictions_csv, dtype={"subject": str})
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(small.subjects_csv), pd.read_csv(whole.subjects_csv))
    expected = bundle.predict_proba(list(a["path"]), store=cells["store"])
    np.testing.assert_allclose(a["p_all"], expected, rtol=1e-12)
    assert list(a["pred"]) == ["all" if p >= bundle.threshold else "hem" for p in a["p_all"]]
    counts = a.groupby("subject").size()
    subj = pd.read_csv(whole.subjects_csv, dtype={"subject": str}).set_index("subject")
    assert subj["n_cells"].to_dict() == counts.to_dict()
    assert len(subj) == 8
    # a bundle made now records the operating point's subject bootstrap at its shipped threshold, and the
    # blast fractions use it (no "old bundle" note)
    boot = bundle.metadata["training_metrics"]["operating_point_bootstrap"]
    assert boot["threshold"] == pytest.approx(bundle.threshold) and len(boot["beta"]) == boot["n_boot"]
    assert sum(n for _, n, _ in boot["per_subject"]) == bundle.metadata["training_data"]["n_images"]
    assert not subj["blast_fraction_status"].str.startswith("old bundle").any()
    assert (subj["blast_fraction_high"] > subj["blast_fraction_low"]).all()


def test_a_bundle_from_before_the_record_still_scores_with_the_old_interval_and_a_note(cells, trained, tmp_path):
    from blastscan.evaluation.patient import blast_fraction

    bundle = load_bundle(trained["path"])
    met = bundle.metadata["training_metrics"]
    del met["operating_point_bootstrap"]  # as bundles made before issue 23 are
    res = score(bundle, [str(cells["dataset"])], tmp_path / "old.csv", jobs=1, progress=False)
    subj = pd.read_csv(res.subjects_csv, dtype={"subject": str})
    assert len(subj) == 8 and subj["blast_fraction_status"].str.contains("old bundle").all()
    r = subj.iloc[0]
    old = blast_fraction(int(r["n_pred_all"]), int(r["n_scored"]), met["metrics"]["recall_all"],
                         met["metrics"]["specificity"])
    assert (r["blast_fraction"], r["blast_fraction_low"], r["blast_fraction_high"]) == pytest.approx(old)
    assert any("predates" in w for w in res.warnings) and "predates" in res.summary()


def test_subject_summary_by_hand():
    rows = pd.DataFrame({
        "subject": ["A", "A", "A", "A", "B", "B", "C", "C", "C", "D", None],
        "p_all": [0.9, 0.8, 0.1, np.nan, 0.2, 0.7, 0.1, 0.3, 0.6, np.nan, 0.9],
        "pred": ["all", "all", "hem", "", "hem", "all", "hem", "hem", "all", "", "all"],
    })
    s = subject_summary(rows, threshold=0.5).set_index("subject")
    assert list(s.index) == ["A", "B", "C", "D"]  # a cell without subject is in no subject
    assert s.loc["A", ["n_cells", "n_scored", "n_pred_all"]].tolist() == [4, 3, 2]
    assert s.loc["A", "fraction_pred_all"] == pytest.approx(2 / 3)
    assert s.loc["A", "mean_p_all"] == pytest.approx(0.6)
    assert s["call"].to_dict() == {"A": "all", "B": "all", "C": "hem", "D": ""}  # B: exactly half -> ALL
    assert s.loc["C", "fraction_pred_all"] == pytest.approx(1 / 3)
    assert np.isnan(s.loc["D", "fraction_pred_all"])
    assert "ALL if >= 50% of scored cells are predicted ALL" in s.loc["A", "rule"]
    assert subject_summary(rows, 0.5, fraction=0.7)["call"].tolist() == ["hem", "hem", "hem", ""]


def test_refused_bundle_writes_nothing(cells, trained, tmp_path):
    path = tmp_path / "model.joblib"
    shutil.copy(trained["path"], path)  # no sidecar
    out = tmp_path / "pred.csv"
    with pytest.raises(BlastscanError, match="no sidecar"):
        score(path, cells["paths"][:2], out, progress=False)
    assert not out.exists() and not subjects_path(out).exists()


# -- command line -----------------------------------------------------------------------------------
def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_train_score_export(cells, trained, run_dir, bad_files, tmp_path):
    model = tmp_path / "model.joblib"
    r = _run("train", cells["dataset"], "-f", "handcrafted", "-c", "logreg", "--store", cells["store"],
             "--out", model, "--jobs", "1", "-q")
    assert r.exit_code == 0, r.output
    assert "expected on new patients (outer subject-disjoint" in r.output and "from 4 subjects" in r.output
    assert model.is_file() and sidecar_path(model).is_file()

    out = tmp_path / "preds.csv"
    r = _run("score", model, *cells["paths"][:3], bad_files["text"], "-o", out, "--jobs", "1", "-q")
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out)) == 4 and "scored 3 of 4 images" in r.output

    sidecar_path(model).unlink()
    r = _run("score", model, cells["paths"][0], "-o", tmp_path / "x.csv", "-q")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    r = _run("score", model, cells["paths"][0], "-o", tmp_path / "x.csv", "-q", "--trust")
    assert r.exit_code == 0, r.output

    r = _run("export", run_dir, "--config", "vgg16/svm", "--out", tmp_path / "e.joblib")
    assert r.exit_code == 2 and "handcrafted/logreg" in r.output
    r = _run("export", run_dir, "--config", "handcrafted/logreg", "--out", tmp_path / "e.joblib", "-q")
    assert r.exit_code == 0, r.output
    assert load_bundle(tmp_path / "e.joblib").metadata["source_run"]["config"] == "handcrafted/logreg"


def test_score_help_warns_about_untrusted_bundles():
    r = _run("score", "--help")
    assert r.exit_code == 0 and "only load bundles you trust" in " ".join(r.output.split())


def test_score_flags_odd_sizes_and_cleans_what_a_killed_run_left(tmp_path):
    import os
    import tempfile

    import pandas as pd

    from blastscan.bundle.scoring import SCORE_TMP_PREFIX, flag_odd_sizes
    from blastscan.pipelines import score as sc

    rows = pd.DataFrame({"status": ["ok", "ok", "unreadable"], "width": [450, 4500, 0], "height": [450, 4500, 0]})
    st = flag_odd_sizes(rows)["status"].tolist()
    assert st[0] == "ok" and st[1].startswith("ok (warning: 4500x4500 px") and st[2] == "unreadable"
    dead = 2 ** 22 + 12345  # above the usual pid_max, so never a live process
    leftover = tmp_path / f".pred.csv.{dead}.abc.csv.tmp"
    leftover.write_text("")
    stale = Path(tempfile.gettempdir()) / f"{SCORE_TMP_PREFIX}{dead}-xyz"
    stale.mkdir(exist_ok=True)
    mine = tmp_path / f".pred.csv.{os.getpid()}.abc.csv.tmp"
    mine.write_text("")
    sc._prepare_output(tmp_path / "pred.csv")
    assert not leftover.exists() and not stale.exists() and mine.exists()
