"""Issue 24: no worker pool outlives its parent after a kill -9 (compare's loky workers and their
resource trackers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _parents() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return out


def _descendants(pid: int) -> set[int]:
    parents, found, frontier = _parents(), set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_of_compare_leaves_no_worker_or_resource_tracker(sample_root, tmp_path):
    cells = sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0"
    store = tmp_path / "store"
    warm = subprocess.run([sys.executable, "-m", "blastscan.cli", "extract", str(cells), "-f", "size,shape", "--store",
                           str(store), "-q", "-j", "1"], env=ENV, capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "blastscan.cli", "compare", str(cells), "-f", "size,shape", "-c",
                             "svm,logreg,svm_pca", "--ensemble", "none", "--store", str(store), "--out",
                             str(tmp_path / "run"), "-q", "-j", "2"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # the pool's workers (and trackers) are up
        seen |= _descendants(proc.pid)
        if len(seen) >= 3:
            time.sleep(1.0)
            seen |= _descendants(proc.pid)
            break
        time.sleep(0.1)
    assert proc.poll() is None and len(seen) >= 2, f"compare ended before its pool was seen ({proc.stderr.read()})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t0 = time.time()
    while any(_alive(p) for p in seen) and time.time() - t0 < 10:
        time.sleep(0.2)
    left = [p for p in seen if _alive(p)]
    for p in left:  # never leave them behind, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(seen)} processes outlived the killed compare by 10 s"
