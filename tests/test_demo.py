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
    assert "Best configuration: handcrafted/" in res.stdout and "subject-disjoint" in res.stdout
    metrics = pd.read_csv(out / "run" / "metrics.csv")
    assert set(metrics["config"]) == {"handcrafted/logreg", "handcrafted/svm"}
    assert (out / "run" / "report.html").stat().st_size > 10_000
    # exported bundle + sidecar, and predictions for every scored image
    assert (out / "model.joblib").is_file() and (out / "model.json").is_file()
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == n
    ok = pred["status"] == "ok"
    assert ok.sum() >= n - 2 and pred.loc[ok, "p_all"].between(0, 1).all()
    assert set(pred.loc[ok, "pred"]) <= {"all", "hem"}
    assert (out / "predictions_subjects.csv").is_file()
