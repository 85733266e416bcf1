"""End to end: `blastscan demo` runs the whole loop on real cells (a subset of the bundled sample)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _small_sample(sample_root: Path, dest: Path, per_subject: int = 3, subjects_per_class: int = 6) -> int:
    """A small C-NMC tree: a few cells of a few subjects per class in one training fold, keeping the C-NMC
    names, and the sample's whole preliminary test phase (images and labels CSV). Returns the cells copied."""
    n = 0
    root = dest / "C-NMC_Leukemia"
    for label in ("all", "hem"):
        by_subject: dict[str, list[Path]] = {}
        for p in sorted(sample_root.rglob(f"training_data/*/{label}/*")):
            by_subject.setdefault(p.name.split("_")[1], []).append(p)
        for subject in sorted(by_subject)[:subjects_per_class]:
            for p in by_subject[subject][:per_subject]:
                (root / "training_data" / "fold_0" / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(p, root / "training_data" / "fold_0" / label / p.name)
                n += 1
    shutil.copytree(next(sample_root.rglob("validation_data")), root / "validation_data")
    return n + len(list((root / "validation_data" / "C-NMC_test_prelim_phase_data").iterdir()))


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_says_why_deep_features_were_skipped(sample_root, tmp_path):
    data = tmp_path / "cells"
    n = _small_sample(sample_root, data)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "blastscan.cli", "demo", "--data", str(data), "--out", str(out),
         "--classifiers", "logreg,svm", "--weights-dir", str(no_weights), "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    # deep features skipped with the reason, not silently and not with random weights
    assert "skipped inception_v3" in res.stdout and str(no_weights) in res.stdout
    assert "11 test-phase cells are kept out of the comparison" in res.stdout
    # the comparison names its best configuration and the split behind it
    configs = {f"{s}/{c}" for s in ("size", "handcrafted") for c in ("logreg", "svm")}
    assert "subject-disjoint" in res.stdout
    assert any(f"Best configuration by ROC-AUC: {c}:" in res.stdout for c in configs), res.stdout[-2000:]
    metrics = pd.read_csv(out / "run" / "metrics.csv")
    assert set(metrics["config"]) == configs  # no deep set, no vote (its members' sets are missing)
    assert (out / "run" / "report.html").stat().st_size > 10_000
    # exported bundle + sidecar, and predictions for every held-out test-phase cell
    assert (out / "model.joblib").is_file() and (out / "model.json").is_file()
    pred = pd.read_csv(out / "predictions.csv", dtype={"subject": str})
    labels = pd.read_csv(data / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv")
    assert len(pred) == len(labels) == 11 and n > 11
    ok = pred["status"] == "ok"
    assert ok.all() and pred["p_all"].between(0, 1).all() and set(pred["pred"]) <= {"all", "hem"}
    # subjects come from the labels CSV (the images are named 1.bmp, 2.bmp, ...)
    truth = labels.assign(path=labels["new_names"].str.replace(".bmp", ".png"),
                          subject=labels["Patient_ID"].str.split("_").str[1],
                          label=labels["labels"].map({1: "all", 0: "hem"}))
    merged = pred.assign(path=pred["path"].map(lambda p: Path(p).name)).merge(truth, on="path")
    assert len(merged) == 11 and (merged["subject_x"] == merged["subject_y"]).all()
    subj = pd.read_csv(out / "predictions_subjects.csv", dtype={"subject": str})
    assert set(subj["subject"]) == set(truth["subject"]) and subj["n_scored"].sum() == 11
    # the last lines: the calls against the shipped labels, right and wrong, per subject and overall
    right = int((merged["pred"] == merged["label"]).sum())
    last = res.stdout.strip().splitlines()
    assert last[-1].startswith(f"held-out cells called right: {right} of 11"), last[-4:]
    assert "C-NMC_test_prelim_phase_data_labels.csv" in last[-4]
    per = dict(part.rsplit(": ", 1) for part in last[-3].removeprefix("per subject (class: right of scored): ")
               .split(", "))
    for s, g in merged.groupby("subject_x"):
        key = f"{s} ({g['label'].iloc[0].upper()})"
        assert per[key] == f"{int((g['pred'] == g['label']).sum())}/{len(g)}"


def test_check_against_labels_counts_right_and_wrong_per_subject(tmp_path):
    from blastscan.pipelines.demo import check_against_labels, format_check

    pred = pd.DataFrame({"path": ["a", "b", "c", "d", "e"], "pred": ["all", "all", "hem", "all", ""],
                         "subject": ["", "", "", "", ""]})
    pred.to_csv(tmp_path / "p.csv", index=False)
    labelled = pd.DataFrame({"path": ["a", "b", "c", "d", "e"], "label": ["all", "hem", "all", "hem", "hem"],
                             "subject": ["3", "H1", "3", "H1", "H1"]})
    check = check_against_labels(tmp_path / "p.csv", labelled)
    assert (check["n"], check["right"], check["not_scored"]) == (4, 1, 1)
    assert (check["right_all"], check["n_all"], check["right_hem"], check["n_hem"]) == (1, 2, 0, 2)
    text = format_check(check, labels_from="labels.csv")
    assert "3 (ALL): 1/2, H1 (HEM): 0/2" in text
    assert text.splitlines()[-1].startswith("held-out cells called right: 1 of 4 (25%), wrong: 3, from 2 subjects")


def test_default_sample_is_package_data_and_has_no_missing_images():
    """The demo's sample ships inside the package, and every row of its labels CSV has its image."""
    import blastscan
    from blastscan.dataset import build_manifest
    from blastscan.pipelines.demo import default_sample

    root = default_sample()
    assert root == Path(blastscan.__file__).resolve().parent / "sample"
    m = build_manifest(root, progress=False)
    assert not m.problems, [p.reason for p in m.problems][:5]
    df = m.df
    assert len(df) >= 240 and df["label"].notna().all()
    # whole-CV support: >= 5 subject groups per class, and the training subjects carry real counts
    assert df.groupby("label")["group"].nunique().min() >= 5
    train = df[df["path"].astype(str).str.contains("training_data")]
    per_subject = train.groupby(["label", "subject"]).size()
    assert (per_subject["all"] >= 10).all() and len(per_subject["all"]) >= 12
    assert (per_subject["hem"].nlargest(2) >= 40).all()
    assert (root / "README.md").is_file() and "CC BY 3.0" in (root / "README.md").read_text()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 10e6


def test_missing_sample_is_one_clear_error(monkeypatch, tmp_path):
    from blastscan.errors import BlastscanError
    from blastscan.pipelines import demo

    monkeypatch.setattr(demo, "__file__", str(tmp_path / "pipelines" / "demo.py"))
    with pytest.raises(BlastscanError, match="bundled sample is missing"):
        demo.default_sample()


@pytest.mark.slow
def test_wheel_ships_every_file_of_the_sample(tmp_path):
    """`pip install` from a wheel, outside a clone, still has the sample `blastscan demo` needs."""
    import zipfile

    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps",
                          "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("blastscan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sample = ROOT / "blastscan" / "sample"
    want = {p.relative_to(ROOT).as_posix() for p in sample.rglob("*") if p.is_file()}
    assert want and want <= names, sorted(want - names)[:5]
    # and every module: a subpackage without __init__.py is silently left out by `packages = find:`
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "blastscan").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)[:5]
    assert wheel.stat().st_size < 12e6


@pytest.mark.slow
def test_demo_on_the_packaged_sample_scores_cells_kept_out_of_its_bundle(tmp_path):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "blastscan.cli", "demo", "--out", str(out), "--classifiers", "logreg",
         "--weights-dir", str(no_weights), "-q"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kept out of the comparison and the bundle" in res.stdout
    used = pd.read_parquet(out / "run" / "manifest.parquet")
    trained_on = set(used.loc[used["used"].astype(bool), "sha256"])
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 11 and trained_on  # the sample's preliminary-phase cells
    assert not set(pred["sha256"].dropna()) & trained_on  # new cells to the model
