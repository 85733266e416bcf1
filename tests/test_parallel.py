"""Extraction and comparison on a Dask LocalCluster of 2 single-threaded workers give exactly the local
results; a worker killed mid-extraction loses nothing finished; a task that raises is retried; without a
scheduler Dask is never imported, and asking for one without Dask is a one-line error."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blastscan import parallel
from blastscan.errors import BlastscanError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "blastscan" / "sample"  # ships with the package: missing is a bug, not a reason to skip


@pytest.fixture(scope="module")
def cells24(tmp_path_factory) -> Path:
    """24 real cells of the sample as class folders: 2 cells of 6 ALL and of 6 HEM subjects (symlinks)."""
    assert (SAMPLE / "manifest.csv").is_file(), f"the packaged sample is missing: {SAMPLE}"
    by = defaultdict(list)
    for r in csv.DictReader(open(SAMPLE / "manifest.csv")):
        by[(r["label"], r["subject"])].append(r)
    root = tmp_path_factory.mktemp("cells24")
    for label in ("all", "hem"):
        for key in [k for k in sorted(by) if k[0] == label][:6]:
            for r in by[key][:2]:
                (root / label).mkdir(exist_ok=True)
                os.symlink(SAMPLE / r["path"], root / label / Path(r["path"]).name)
    return root


@pytest.fixture(scope="module")
def cluster():
    """2 single-threaded worker processes (what `--scheduler local:2` starts)."""
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as c:
        yield c


@pytest.fixture(scope="module")
def manifest24(cells24):
    from blastscan.dataset import build_manifest

    return build_manifest(cells24, progress=False).df


def _table(store, identity):
    from blastscan.features.store import FeatureStore

    fstore = FeatureStore(store)
    return fstore.read(identity, fstore.known_shas(identity)).sort_index(), fstore.failures(identity)


def _extract(manifest, store, **kw):
    from blastscan.pipelines.extract import extract

    return extract(manifest, ["handcrafted"], store, progress=False, **kw).runs[0]


@pytest.mark.slow
def test_extract_and_compare_on_a_cluster_equal_local(manifest24, cluster, tmp_path, monkeypatch):
    from blastscan.evaluation import EvalSettings
    from blastscan.features import compute
    from blastscan.pipelines.compare import compare

    local = _extract(manifest24, tmp_path / "local", jobs=1)
    monkeypatch.setattr(compute, "TASK_IMAGES", 4)  # 6 tasks: both workers get some
    with parallel.session(cluster.scheduler_address) as ex:
        assert isinstance(ex, parallel.DaskExecutor) and ex.workers == 2
        remote = _extract(manifest24, tmp_path / "dask", jobs=1)
        assert parallel.executor(1) is ex
    assert parallel.active() is None
    assert (remote.computed, remote.failed) == (local.computed, local.failed) and local.computed > 0
    X_l, f_l = _table(tmp_path / "local", local.identity)
    X_d, f_d = _table(tmp_path / "dask", remote.identity)
    pd.testing.assert_frame_equal(X_l, X_d)
    assert f_l == f_d

    settings = EvalSettings(folds=3, inner_folds=2, leaky_folds=2, n_boot=20, seed=3)
    runs = {}
    for name, scheduler in (("local", None), ("dask", cluster.scheduler_address)):
        with parallel.session(scheduler):
            runs[name] = compare(manifest24, ["handcrafted"], ["logreg"], tmp_path / "local", tmp_path / f"run_{name}",
                                 settings=settings, jobs=2, progress=False)
    assert runs["local"].best == runs["dask"].best == "handcrafted/logreg"
    for f in ("metrics.csv", "predictions.csv", "per_subject.csv"):
        assert (tmp_path / "run_local" / f).read_text() == (tmp_path / "run_dask" / f).read_text(), f


def test_a_killed_worker_loses_nothing_finished(manifest24, cluster, tmp_path, monkeypatch):
    from distributed import Client

    from blastscan.features import compute
    from blastscan.features.store import FeatureStore

    monkeypatch.setattr(compute, "TASK_IMAGES", 2)  # 12 tasks
    monkeypatch.setattr(compute, "FLUSH_ROWS", 1)  # every result is published at once
    written: list[tuple[str, list[str]]] = []
    real_write = FeatureStore.write_chunk
    with Client(cluster.scheduler_address) as probe:
        pids = probe.run(os.getpid)

    def write_and_kill(self, identity, shas, mat, failures):
        real_write(self, identity, shas, mat, failures)
        written.append((identity, list(shas) + list(failures)))
        if len(written) == 1:  # a worker dies while the others' tasks are running
            os.kill(next(iter(pids.values())), signal.SIGKILL)

    monkeypatch.setattr(FeatureStore, "write_chunk", write_and_kill)
    with parallel.session(cluster.scheduler_address):
        run = _extract(manifest24, tmp_path / "store", jobs=1)
    monkeypatch.undo()
    for identity in {i for i, _ in written}:  # each family's table: every image once, none twice
        shas = [s for i, chunk in written if i == identity for s in chunk]
        assert len(shas) == len(set(shas)) == manifest24["sha256"].nunique(), identity
    assert run.computed + run.failed == manifest24["sha256"].nunique()
    local = _extract(manifest24, tmp_path / "local", jobs=1)
    pd.testing.assert_frame_equal(_table(tmp_path / "store", run.identity)[0],
                                  _table(tmp_path / "local", local.identity)[0])
    assert _extract(manifest24, tmp_path / "store", jobs=1).computed == 0


def _flaky(marker: str, value: int) -> int:
    """Raises the first time (leaving a marker file), then succeeds."""
    if not os.path.exists(marker):
        Path(marker).write_text("x")
        raise OSError("transient")
    return value * 2


def test_a_task_that_raises_is_retried(cluster, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        with parallel.session(cluster.scheduler_address) as ex:
            out = sorted(ex.map_unordered(_flaky, [(str(tmp_path / f"m{i}"), i) for i in range(4)]))
            shared = np.arange(400_000, dtype=np.float64)  # > SHARE_BYTES: sent once, shared by the tasks
            sums = list(ex.map_unordered(np.sum, [(shared,), (shared,)]))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert out == [0, 2, 4, 6]
    assert sums == [shared.sum()] * 2


def test_scheduler_resolution(monkeypatch):
    for var in parallel.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert parallel.resolve_scheduler(None) is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://b:8786")
    assert parallel.resolve_scheduler(None) == "tcp://b:8786"
    monkeypatch.setenv("BLASTSCAN_SCHEDULER", "local:3")
    assert parallel.resolve_scheduler(None) == "local:3"
    assert parallel.resolve_scheduler("none") is None  # --scheduler none beats the environment
    with parallel.session("off") as ex:
        assert ex is None and isinstance(parallel.executor(2), parallel.LocalExecutor)
    with pytest.raises(BlastscanError, match="local:N"):
        with parallel.session("local:0"):
            pass


def test_no_dask_import_without_scheduler_and_one_line_error_without_dask(cells24, tmp_path):
    code = ("import sys, blastscan.cli, blastscan.pipelines.compare, blastscan.pipelines.score;"
            "from blastscan import parallel; list(parallel.executor(2).map_unordered(abs, [(-1,), (2,)]));"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    env = {k: v for k, v in os.environ.items() if k not in parallel.ENV_VARS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
    # Dask made unimportable: --scheduler fails with one line that says how to install it
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("distributed", "dask"):
        (blocker / f"{name}.py").write_text("raise ImportError('blocked for a test')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), *filter(None, [env.get("PYTHONPATH")])])
    res = subprocess.run([sys.executable, "-m", "blastscan.cli", "extract", str(cells24), "--store",
                          str(tmp_path / "s"), "--scheduler", "local:2", "-q"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ['error: --scheduler local:2: Dask is not installed; install it '
                                               'with: pip install "blastscan[dask]"']


def _n_worker_models() -> int:
    from blastscan.features import compute

    return len(getattr(compute, "_WORKER_EXTRACTORS"))


@pytest.mark.slow
def test_deep_batches_on_a_cluster_equal_local(manifest24, cluster, tmp_path):
    import cloudpickle
    from distributed import Client

    from blastscan.pipelines.extract import extract

    opts = {"random_weights": True, "input_size": 64, "batch_size": 2}  # tasks of 8 images: 3 tasks
    part = manifest24.iloc[:20]
    local = extract(part, ["vgg16"], tmp_path / "local", extractor_options=opts, jobs=1, progress=False).runs[0]
    with parallel.session(cluster.scheduler_address):
        remote = extract(part, ["vgg16"], tmp_path / "dask", extractor_options=opts, progress=False).runs[0]
    assert remote.computed == local.computed == part["sha256"].nunique()
    # TensorFlow's CPU kernels sum in an order that depends on their thread count (1 per Dask worker):
    # equal to float32 rounding, not bit for bit
    pd.testing.assert_frame_equal(_table(tmp_path / "local", local.identity)[0],
                                  _table(tmp_path / "dask", remote.identity)[0], check_exact=False, rtol=1e-3,
                                  atol=1e-6)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with Client(cluster.scheduler_address) as probe:  # one network per worker, built once for all its tasks
            assert set(probe.run(_n_worker_models).values()) <= {0, 1}
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_local_cluster_workers_keep_glibcs_own_malloc_settings(monkeypatch):
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; with it handcrafted extraction took
    # 1.6-1.7x the CPU time per cell (the "half the local rate" of a Dask worker). local:N leaves it unset.
    pytest.importorskip("distributed")
    # a Nanny writes its pre-spawn variables into its parent's os.environ too (distributed/nanny.py), so the
    # plain LocalCluster of this module's fixture left it in the test process: start from a clean one
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with parallel.session("local:1") as ex:
        seen = ex.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(seen.values()) == [None]


def test_map_threads_keeps_the_order_bounds_the_look_ahead_and_stops_with_the_caller():
    import threading
    import time

    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (7 - i % 8))  # later items finish first within each group of 8
        return i * i

    assert list(parallel.map_threads(work, range(40), 3)) == [i * i for i in range(40)]
    started.clear()
    gen = parallel.map_threads(work, range(1000), 2, ahead=4)
    assert [next(gen) for _ in range(5)] == [0, 1, 4, 9, 16]
    gen.close()  # the caller stops: what was not started is never run
    assert len(started) <= 5 + 4 * 2, len(started)

    def fail(i):
        if i == 3:
            raise ValueError("bad item 3")
        return i

    with pytest.raises(ValueError, match="bad item 3"):
        list(parallel.map_threads(fail, range(10), 2))
