"""Throughput of `extract -f handcrafted` and of a `compare` grid on a Dask LocalCluster of 1 vs 2 workers,
beside the local process pool (-j 1, -j 2), on real C-NMC cells.

Usage: .venv/bin/python benchmarks/bench_dask.py [--n 400] [--classifiers svm,xgboost] [--data DIR]
Every figure excludes the cluster's start (printed apart). The load average is printed before and after:
on a shared machine compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cnmc2019"


def _cells(data: Path, n: int, tmp: Path) -> Path:
    """A CSV list of ``n`` real cells, alternating ALL and HEM, spread over the subjects (absolute paths)."""
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    rows = [r for r in rows if r["label"] in ("all", "hem")]
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in ("all", "hem")}
    picked = []
    for label, k in (("all", (n + 1) // 2), ("hem", n // 2)):
        pool = by_label[label]
        picked += [pool[i * len(pool) // k] for i in range(min(k, len(pool)))]  # evenly over the (sorted) list
    out = tmp / "cells.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        for r in {r["path"]: r for r in picked}.values():
            w.writerow([str(data / r["path"]), r["label"], r["subject"]])
    return out


def _warm_up() -> None:
    import blastscan.features.handcrafted  # noqa: F401
    import blastscan.pipelines.grid  # noqa: F401


def _extract_rate(manifest, store: Path, jobs: int) -> tuple[float, int]:
    from blastscan.pipelines.extract import extract

    t0 = time.perf_counter()
    run = extract(manifest, ["handcrafted"], store, jobs=jobs, progress=False).runs[0]
    secs = time.perf_counter() - t0
    return (run.computed + run.failed) / secs, run.computed + run.failed


def _compare_seconds(manifest, store: Path, out: Path, classifiers: list[str], jobs: int) -> float:
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.compare import compare

    res = compare(manifest, ["handcrafted"], classifiers, store, out, jobs=jobs, progress=False,
                  settings=EvalSettings(n_boot=0))
    return float(res.run["seconds"]["grid"])  # the fits only: features were extracted before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="cells to extract (default 400)")
    ap.add_argument("--classifiers", default="svm,xgboost")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(f"no C-NMC data at {args.data} (give --data)")
    from distributed import Client, LocalCluster

    from blastscan import parallel
    from blastscan.dataset import build_manifest

    print(f"cores: {os.cpu_count()}  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as d:
        tmp = Path(d)
        manifest = build_manifest(_cells(args.data, args.n, tmp), progress=False).df
        print(f"{len(manifest)} real cells of {manifest['subject'].nunique()} subjects from {args.data}")
        classifiers = args.classifiers.split(",")
        results = {}
        for label, workers in (("local -j 1", 0), ("local -j 2", -2), ("dask 1 worker", 1), ("dask 2 workers", 2)):
            cluster = client = None
            start = 0.0
            if workers > 0:
                t0 = time.perf_counter()
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
                client = Client(cluster)
                client.run(_warm_up)  # imports happen once per worker, not in the timed run
                start = time.perf_counter() - t0
            jobs = -workers if workers < 0 else 1
            with parallel.session(cluster.scheduler_address if cluster else None):
                rate, n = _extract_rate(manifest, tmp / f"store{workers}", jobs)
                grid_s = _compare_seconds(manifest, tmp / f"store{workers}", tmp / f"run{workers}", classifiers, jobs)
            if cluster is not None:
                client.close()
                cluster.close()
            results[label] = (rate, grid_s)
            extra = f"  (cluster start {start:.1f} s, not counted)" if workers > 0 else ""
            print(f"{label:<15} extract {rate:6.1f} images/s over {n} cells   compare grid {grid_s:6.1f} s{extra}",
                  flush=True)
        r1, r2 = results["dask 1 worker"], results["dask 2 workers"]
        l1, l2 = results["local -j 1"], results["local -j 2"]
        print(f"dask 2 vs 1 worker: extract x{r2[0] / r1[0]:.2f}, compare grid x{r1[1] / r2[1]:.2f} faster")
        print(f"dask 2 workers vs local -j 2: extract x{r2[0] / l2[0]:.2f}, compare grid x{l2[1] / r2[1]:.2f}")
        print(f"local -j 2 vs -j 1: extract x{l2[0] / l1[0]:.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
