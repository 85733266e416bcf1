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
    """Copy a few cells of a few subjects per class into class folders, keeping the C-NMC names."""
    n = 0
    for label in ("all", "hem"):
        by_subject: dict[str, list[Path]] = {}
        for p in sorted(sample_root.rglob(f"training_data/*/{label}/*")):
            by_subject.setdefault(p.name.split("_")[1], []).append(p)
        for subject in sorted(by_subject)[:subjects_per_class]:
            for p in by_subject[subject][:per_subject]:
                (dest / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dest / label / p.name)
                n += 1
    return n


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
    # the comparison names its best configuration and the split behind it
    configs = {f"{s}/{c}" for s in ("size", "handcrafted") for c in ("logreg", "svm")}
    assert "subject-disjoint" in res.stdout
    assert any(f"Best configuration by ROC-AUC: {c}:" in res.stdout for c in configs), res.stdout[-2000:]
    metrics = pd.read_csv(out / "run" / "metrics.csv")
    assert set(metrics["config"]) == configs  # no deep set, no vote (its members' sets are missing)
    assert (out / "run" / "report.html").stat().st_size > 10_000
    # exported bundle + sidecar, and predictions for every scored image
    assert (out / "model.joblib").is_file() and (out / "model.json").is_file()
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == n
    ok = pred["status"] == "ok"
    assert ok.sum() >= n - 2 and pred.loc[ok, "p_all"].between(0, 1).all()
    assert set(pred.loc[ok, "pred"]) <= {"all", "hem"}
    assert (out / "predictions_subjects.csv").is_file()


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
