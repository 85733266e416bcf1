"""End to end, as a user runs it: `blastscan extract` then `blastscan compare` on real C-NMC cells of
several subjects, in a subprocess; and the one-line errors of `compare`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

# the installed command, as a user runs it (next to this interpreter in the venv)
_EXE = Path(sys.executable).parent / "blastscan"
BLASTSCAN = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "blastscan.cli"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


def _blastscan(*args, timeout=300):
    return subprocess.run([*BLASTSCAN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def small_cnmc(cnmc_root, tmp_path_factory) -> Path:
    """~200 real cells in the C-NMC layout: ALL and HEM subjects of every size, plus the prelim phase.

    Subjects keep all their cells up to a cap, so big subjects stay big and small ones small, as in the
    real data; files are symlinked.
    """
    root = tmp_path_factory.mktemp("cnmc") / "C-NMC_Leukemia"
    rows = list(csv.DictReader(open(cnmc_root / "manifest.csv")))
    by_subject = defaultdict(list)
    for r in rows:
        by_subject[(r["label"], r["subject"])].append(r)
    keep_all = ["11", "16", "1", "3", "57", "45", "67", "52", "2"]
    keep_hem = ["H10", "H14", "H11", "H23", "H24", "H6", "H49", "H30", "H3"]
    cap = {"11": 25, "16": 20, "2": 20, "1": 19, "H10": 40, "H14": 40}
    picked = []
    for label, subjects in (("all", keep_all), ("hem", keep_hem)):
        for s in subjects:
            picked += by_subject[(label, s)][: cap.get(s, 12)]
    for r in picked:
        dst = root.parent / r["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(cnmc_root / r["path"], dst)
    labels_csv = "C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv"
    shutil.copy(cnmc_root / labels_csv, root.parent / labels_csv)
    return root.parent


@pytest.mark.slow
def test_extract_then_compare_on_real_cells(small_cnmc, tmp_path):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    ext = _blastscan("extract", small_cnmc, "--features", "handcrafted", "--store", store, "--jobs", 2, "-q")
    assert ext.returncode == 0, ext.stderr
    res = _blastscan("compare", small_cnmc, "--features", "handcrafted", "--classifiers", "logreg,xgboost",
                     "--store", store, "--out", run_dir, "--bootstrap", 200, "--jobs", 2, "-q")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr

    run = json.loads((run_dir / "run.json").read_text())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    best = metrics[(metrics["config"] == run["best"]) & (metrics["split"] == "subject_cv_pooled")
                   & metrics["headline"]].iloc[0]
    auc, wf1 = f"{best['roc_auc']:.3f}", f"{best['weighted_f1']:.3f}"
    # the best configuration (by ROC-AUC, issue 23) and its numbers end the output, as in the report's first paragraph
    assert f"Best configuration by ROC-AUC: {run['best']}: ROC-AUC {auc}" in res.stdout
    assert f"weighted F1 {wf1}" in res.stdout
    md = (run_dir / "report.md").read_text()
    assert f"**{run['best']}**: ROC-AUC **{auc}**" in md.split("\n## ")[0]
    assert f"<strong>{auc}</strong>" in (run_dir / "report.html").read_text()
    assert {c["name"] for c in run["configs"]} == {"handcrafted/logreg", "handcrafted/xgboost"}
    assert run["data"]["n_images"] == best["n"] and best["n_subjects"] >= 16

    # real subjects never straddle folds, and the official prelim phase was evaluated
    pred = pd.read_csv(run_dir / "predictions.csv", dtype=str)
    cv = pred[(pred["split"] == "subject_cv") & (pred["config"] == run["best"])]
    assert cv.groupby("subject")["fold"].nunique().max() == 1
    assert (metrics["split"] == "official_prelim").any()
    assert (metrics["split"] == "leaky_image_cv_pooled").any()
    # handcrafted features computed once are reused: compare did not recompute anything
    assert "computed 0" in _blastscan("extract", small_cnmc, "--store", store, "-q").stdout


@pytest.mark.slow
def test_compare_extracts_what_the_store_lacks(small_cnmc, tmp_path):
    # no command order to remember: compare computes the missing features (listing them as extract does)
    store = tmp_path / "empty"
    res = _blastscan("compare", small_cnmc, "--features", "handcrafted", "--classifiers", "logreg",
                     "--store", store, "--out", tmp_path / "run", "--bootstrap", 0, "--leaky-folds", 0, "-q")
    assert res.returncode == 0, res.stderr
    assert "shape@" in res.stderr and "computed" in res.stderr and "reused 0" in res.stderr  # handcrafted's families
    again = _blastscan("extract", small_cnmc, "--features", "handcrafted", "--store", store, "-q")
    assert "computed 0" in again.stdout and "failed" in again.stdout


def test_bad_param_is_one_line_error(tmp_path):
    res = _blastscan("compare", tmp_path, "--param", "C=10")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: --param C=10: expected CLASSIFIER.NAME=VALUE, e.g. svm.C=10"]


def test_params_file_is_overridden_by_param_and_bad_files_are_one_line_errors(tmp_path):
    from blastscan.errors import BlastscanError
    from blastscan.options import load_params

    f = tmp_path / "params.json"
    f.write_text('{"svm": {"C": 10, "gamma": 0.01}, "xgboost": {"max_depth": 2}}')
    got = load_params(["svm.C=3", "logreg.C=0.5"], f)
    assert got == {"svm": {"C": 3, "gamma": 0.01}, "xgboost": {"max_depth": 2}, "logreg": {"C": 0.5}}
    f.write_text('{"svm": 3}')
    with pytest.raises(BlastscanError, match="expected"):
        load_params(None, f)
    f.write_text("{not json")
    res = _blastscan("compare", tmp_path, "--params-file", f)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "not valid JSON" in res.stderr


@pytest.mark.slow
def test_compare_tune_records_the_choice_per_fold_and_export_refits_it(small_cnmc, tmp_path):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    res = _blastscan("compare", small_cnmc, "--features", "size", "--classifiers", "logreg", "--tune",
                     "--store", store, "--out", run_dir, "--bootstrap", 0, "--leaky-folds", 0, "-q")
    assert res.returncode == 0, res.stderr
    run = json.loads((run_dir / "run.json").read_text())
    rec = next(r for r in run["results"] if r["name"] == "size/logreg")
    assert rec["tune"] is True and set(rec["chosen_params"]) == {str(k) for k in range(run["n_splits"])}
    assert all(set(v) == {"C"} for v in rec["chosen_params"].values())
    out = tmp_path / "tuned.joblib"
    exp = _blastscan("export", run_dir, "--config", "size/logreg", "--out", out, "-q")
    assert exp.returncode == 0, exp.stderr
    meta = json.loads(out.with_suffix(".json").read_text())["metadata"]
    assert meta["tuned"]["chosen"]["C"] in (0.001, 0.01, 0.1, 1.0)
