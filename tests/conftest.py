"""Shared fixtures: paths to the real C-NMC cells and weights in ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BLASTSCAN_SHARED", ROOT.parent / "shared"))
CNMC = SHARED / "data" / "cnmc2019"
WEIGHTS = SHARED / "weights"
SAMPLE = ROOT / "blastscan" / "sample"

# Keep TensorFlow quiet and single-process-friendly in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def cnmc_root() -> Path:
    """The real C-NMC subset in ../shared/data/cnmc2019 (skips when absent)."""
    if not (CNMC / "manifest.csv").is_file():
        pytest.skip("../shared/data/cnmc2019 not present")
    return CNMC


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The ImageNet weights in ../shared/weights (skips when absent)."""
    if not any(WEIGHTS.glob("*.h5")):
        pytest.skip("../shared/weights not present")
    return WEIGHTS


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The small real sample shipped as package data in blastscan/sample."""
    if not SAMPLE.is_dir():
        pytest.skip("blastscan/sample not present")
    return SAMPLE


@pytest.fixture(scope="session")
def real_cell_paths(cnmc_root) -> list[Path]:
    """A dozen real cells, both classes, several subjects (deterministic)."""
    import csv

    rows = list(csv.DictReader(open(cnmc_root / "manifest.csv")))
    picked, seen = [], {}
    for r in rows:
        key = (r["label"], r["subject"])
        if seen.get(key, 0) < 2 and len(picked) < 12:
            seen[key] = seen.get(key, 0) + 1
            picked.append(cnmc_root / r["path"])
    return picked
