"""Issue 15, tried as a user would: kill -9 mid-extraction, no worker outliving its parent, two processes
writing the same images into one store, a read-only store, images without subjects."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}

# a slow per-image extractor in a script of its own: it logs "<time> <sha>" when an image is finished
SCRIPT = textwrap.dedent('''
    import sys, time, hashlib
    import numpy as np
    from blastscan.dataset import build_manifest
    from blastscan.features.base import PerImageExtractor, register_extractor
    from blastscan.pipelines.extract import extract

    LOG = sys.argv[3]

    @register_extractor("slow_px")
    class Slow(PerImageExtractor):
        name = "slow_px"
        version = "1"

        def __init__(self, options=None):
            pass

        @property
        def feature_names(self):
            return ["px_mean"]

        def compute(self, image):
            time.sleep(0.05)
            sha = hashlib.sha256(image.tobytes()).hexdigest()
            with open(LOG, "a") as fh:
                fh.write(f"{time.time()} {sha}\\n")
            return np.array([image.mean()], np.float32)

    man = build_manifest(sys.argv[1]).df
    print("ready", flush=True)
    extract(man, ["slow_px"], sys.argv[2], jobs=int(sys.argv[4]), progress=False)
    print("done", flush=True)
''')


def _images(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"c{i:04d}.png")
    return folder


def _start(tmp_path: Path, images: Path, store: Path, jobs: int) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "slow_extract.py"
    script.write_text(SCRIPT)
    log = tmp_path / f"finished-{jobs}.log"
    proc = subprocess.Popen([sys.executable, str(script), str(images), str(store), str(log), str(jobs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc, log


def _finished(log: Path) -> list[tuple[float, str]]:
    if not log.exists():
        return []
    return [(float(t), s) for t, s in (line.split() for line in log.read_text().split("\n") if line.strip())]


def _stored(store: Path) -> set[str]:
    import pandas as pd

    shas: set[str] = set()
    for p in store.glob("*/part-*.parquet"):
        shas.update(pd.read_parquet(p, columns=["sha256"])["sha256"])
    return shas


def _pixel_shas(images: Path) -> dict[str, str]:
    import hashlib

    from blastscan.dataset import load_image, build_manifest

    df = build_manifest(images).df
    return {hashlib.sha256(load_image(p).tobytes()).hexdigest(): s for p, s in zip(df["path"], df["sha256"])}


@pytest.mark.slow
def test_kill_9_mid_extraction_keeps_all_but_the_last_seconds(tmp_path):
    from blastscan.features.compute import FLUSH_SECONDS

    images = _images(tmp_path / "cells", 400)
    store = tmp_path / "store"
    proc, log = _start(tmp_path, images, store, jobs=1)
    deadline = time.time() + 60
    while len(_finished(log)) < 100 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    finished = _finished(log)
    assert 100 <= len(finished) < 400, "the run ended before it was killed"
    to_file = _pixel_shas(images)
    kept = _stored(store)
    # everything finished more than FLUSH_SECONDS (+1 s of slack) before the kill was published
    must_keep = {to_file[s] for t, s in finished if t < killed_at - FLUSH_SECONDS - 1.0}
    print(f"kill -9: finished {len(finished)}, kept {len(kept)}, required {len(must_keep)}")
    assert must_keep and must_keep <= kept
    assert len(kept) >= len(finished) - 60  # at most ~3 s of work (20 images/s) lost
    assert not list(store.glob("*/*.tmp"))  # a temp part never looks like a part
    # the next run computes only what was not kept
    proc = subprocess.run([sys.executable, str(tmp_path / "slow_extract.py"), str(images), str(store),
                           str(tmp_path / "second.log"), "1"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(_finished(tmp_path / "second.log")) == 400 - len(kept)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_no_worker_outlives_a_killed_parent(tmp_path):
    images = _images(tmp_path / "cells", 300)
    proc, log = _start(tmp_path, images, tmp_path / "store", jobs=2)
    deadline = time.time() + 90
    while len(_finished(log)) < 20 and time.time() < deadline:
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert workers, "no worker processes were started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.time() + 15
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.3)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leave them behind even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(workers)} child processes outlived their parent"


def _same_rows_writer(root: str, n: int, seed: int) -> None:
    from blastscan.features.store import FeatureStore

    s = FeatureStore(root)
    s.ensure_table({"identity": "fake@1", "name": "fake", "version": "1", "config": {}}, ["a", "b"])
    order = np.random.default_rng(seed).permutation(n)
    for i in order:
        s.write_chunk("fake@1", [f"{i:064d}"], np.full((1, 2), i, np.float32))
        if i % 7 == 0:
            s.compact("fake@1")
    s.compact("fake@1")


def test_two_processes_writing_the_same_images_into_one_store(tmp_path):
    import multiprocessing as mp

    from blastscan.features.store import FeatureStore

    root = str(tmp_path / "store")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_same_rows_writer, args=(root, 40, seed)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = FeatureStore(root).read("fake@1")
    assert len(df) == 40 and df.index.is_unique
    assert all(df.loc[f"{i:064d}", "a"] == i for i in range(40))  # each row once, with its own values


def _run_unprivileged(args, **kw):
    """Run ``args`` without the capabilities that let root ignore file modes."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is missing")
    cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-all", *args] if os.geteuid() == 0 else list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **kw)


BLASTSCAN = [sys.executable, "-m", "blastscan.cli"]


@pytest.fixture
def sample_dir(sample_root) -> Path:
    """Real C-NMC cells in class folders (all/, hem/) with C-NMC names."""
    return sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0"


@pytest.mark.slow  # several real CLI runs as another user
def test_read_only_store_is_reused_and_refused_up_front_for_new_rows(tmp_path, sample_dir):
    cells = tmp_path / "cells"
    shutil.copytree(sample_dir / "all", cells / "all")
    store = tmp_path / "store"
    some = sorted((cells / "all").iterdir())
    for p in some[5:]:
        p.unlink()
    res = subprocess.run([*BLASTSCAN, "extract", str(cells), "--store", str(store), "-q", "-j", "1"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr
    for p in [store, *store.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        res = _run_unprivileged([*BLASTSCAN, "extract", str(cells), "--store", str(store), "-q", "-j", "1"])
        assert res.returncode == 0, res.stderr  # everything is there: read, nothing written
        shutil.copy(sample_dir / "hem" / sorted(os.listdir(sample_dir / "hem"))[0], cells / "all" / "new.bmp")
        for args in ([], ["--retry-failed"]):
            res = _run_unprivileged([*BLASTSCAN, "extract", str(cells), "--store", str(store), "-q", "-j", "1",
                                     *args])
            assert res.returncode == 2, res.stderr
            lines = [x for x in res.stderr.strip().splitlines() if not x.startswith("note:")]
            assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
            assert f"feature store {store}" in lines[0] and "not writable" in lines[0]
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_compare_out_under_a_read_only_folder_fails_before_any_fit(tmp_path, sample_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        t0 = time.time()
        res = _run_unprivileged([*BLASTSCAN, "compare", str(sample_dir), "-c", "logreg", "--out",
                                 str(locked / "run"), "--store", str(tmp_path / "store"), "-q"])
    finally:
        locked.chmod(0o755)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"--out {locked / 'run'}" in res.stderr and "cannot write" in res.stderr
    assert not list((tmp_path / "store").glob("*/meta.json"))  # refused before any feature was computed
    assert time.time() - t0 < 60


def _csv_without_subjects(tmp_path: Path, sample_dir: Path, n: int = 12) -> Path:
    lines = ["path,label"]
    for label in ("all", "hem"):
        for i, p in enumerate(sorted((sample_dir / label).iterdir())[:n]):
            dst = tmp_path / "cells" / f"cell_{label}_{i}{p.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst)
            lines.append(f"{dst},{label}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.csv"


@pytest.mark.slow
def test_images_without_subjects_are_refused_or_labelled_leaky(tmp_path, sample_dir):
    import json

    csv_path = _csv_without_subjects(tmp_path, sample_dir)
    store = tmp_path / "store"
    base = [*BLASTSCAN, "compare", str(csv_path), "-c", "logreg", "--store", str(store), "-q", "--bootstrap", "0",
            "--leaky-folds", "0", "--inner-folds", "0", "--folds", "3"]
    res = subprocess.run([*base, "--out", str(tmp_path / "run")], capture_output=True, text=True, env=ENV,
                         timeout=600)
    errors = [x for x in res.stderr.strip().splitlines() if not x.startswith("note:")]
    assert res.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: compare: "), res.stderr
    assert "24 of 24 labelled images have no subject" in res.stderr and "--subject-pattern" in res.stderr
    assert not (tmp_path / "run").exists() and not list(store.glob("*/meta.json"))
    res = subprocess.run([*base, "--out", str(tmp_path / "run"), "--per-image-split"], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("LEAKY per-image split") and "from 24 subjects" not in res.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["leaky_split"].startswith("LEAKY per-image split")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "LEAKY per-image split" in report and "so the numbers estimate performance" not in report
    # train refuses the same way, and labels its bundle when asked
    res = subprocess.run([*BLASTSCAN, "train", str(csv_path), "-c", "logreg", "--store", str(store), "-q"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 2 and "have no subject" in res.stderr, res.stderr
    res = subprocess.run([*BLASTSCAN, "train", str(csv_path), "-c", "logreg", "--store", str(store), "-q",
                          "--per-image-split", "--out", str(tmp_path / "m.joblib")], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "m.json").read_text())["metadata"]
    assert meta["leaky_split"].startswith("LEAKY") and meta["training_metrics"]["split"].startswith("LEAKY")
    # a pattern gives the subjects: then the split is subject-disjoint again
    res = subprocess.run([*BLASTSCAN, "data", str(csv_path), "--subject-pattern", r"cell_(\w+)_(\d)"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0 and "no subject" not in res.stdout, res.stdout
