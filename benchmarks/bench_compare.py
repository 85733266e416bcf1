"""Wall time and peak memory of `blastscan compare` over the default grid on the real C-NMC subset.

Usage::

    .venv/bin/python benchmarks/bench_compare.py [--data DIR] [--store DIR] [--weights-dir DIR]
        [--features A,B] [--classifiers x,y] [--jobs 2] [--separate]

Features missing from the store are extracted first; that step is timed and printed on its own and is
not part of the comparison figures. The comparison runs the real CLI in a subprocess while a sampler
reads the resident memory of its whole process tree (the command and its joblib workers) from /proc.
By default the full grid runs once (the budget case: every classifier x every feature set, leaky split
and thresholds included) and the per-classifier lines give the fit time each classifier used, summed over
its folds and feature sets (with --jobs 2 these add up to about twice the wall time). With --separate, each
classifier runs as its own `blastscan compare` for its own wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the grid compare offers by default on the dev data: the default classifiers (registry) on the feature
# sets of bench_accuracy.py, with the default votes (added by compare when their members' sets are there)
DEFAULT_FEATURES = "size,shape,handcrafted,inception_v3,vgg16"
DEFAULT_CLASSIFIERS = "logreg,svm,svm_pca"
BUDGET_S = 3 * 60  # issue 16: the default grid on cached features within 3 minutes on 2 cores


def _tree_rss_mb(root_pid: int) -> tuple[float, float]:
    """(sum, max) resident memory in MB of ``root_pid`` and all its descendants."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            pid = int(entry)
            parent[pid] = int(fields[1])
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        p = frontier.pop()
        for child, par in parent.items():
            if par == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    vals = [rss.get(p, 0) for p in tree]
    return sum(vals) / 2**20, (max(vals) if vals else 0) / 2**20


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; return wall seconds, exit code, output and peak tree memory (sampled every 0.25 s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    peak = {"sum": 0.0, "max": 0.0}

    def sample():
        while proc.poll() is None:
            s, m = _tree_rss_mb(proc.pid)
            peak["sum"], peak["max"] = max(peak["sum"], s), max(peak["max"], m)
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return {"seconds": time.perf_counter() - t0, "rc": proc.returncode, "stdout": out, "stderr": err,
            "peak_tree_mb": peak["sum"], "peak_process_mb": peak["max"]}


def ensure_features(data: Path, features: str, store: Path, weights_dir: str | None, jobs: int) -> None:
    """Extract whatever the store lacks (timed separately from the comparison)."""
    print("== extraction (features missing from the store; NOT part of the comparison timing)", flush=True)
    cmd = [sys.executable, "-m", "blastscan.cli", "extract", str(data), "--features", features,
           "--store", str(store), "--jobs", str(jobs), "-q"]
    if weights_dir:
        cmd += ["--weights-dir", weights_dir]
    r = run_measured(cmd)
    print(r["stdout"].rstrip())
    if r["rc"] != 0:
        sys.exit(f"extract failed:\n{r['stderr']}")
    print(f"extract: {r['seconds']:.1f} s wall, peak memory {r['peak_tree_mb']:.0f} MB (process tree)\n", flush=True)


def compare_cmd(args, classifiers: str, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "blastscan.cli", "compare", str(args.data), "--features", args.features,
           "--classifiers", classifiers, "--store", str(args.store), "--out", str(out), "--jobs", str(args.jobs),
           "--folds", str(args.folds), "-q"]
    if args.weights_dir:
        cmd += ["--weights-dir", args.weights_dir]
    return cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cnmc2019"))
    ap.add_argument("--store", type=Path, default=Path("/tmp/blastscan-bench-store"))
    ap.add_argument("--weights-dir", default="/work/shared/weights")
    ap.add_argument("--features", default=DEFAULT_FEATURES)
    ap.add_argument("--classifiers", default=DEFAULT_CLASSIFIERS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/blastscan-bench-run"))
    ap.add_argument("--separate", action="store_true", help="one compare per classifier (own wall time and memory)")
    ap.add_argument("--skip-extract", action="store_true", help="assume the store already holds every feature set")
    args = ap.parse_args(argv)

    print(f"data {args.data}; store {args.store}; weights {args.weights_dir}; jobs {args.jobs}; "
          f"cpu cores {os.cpu_count()}")
    if not args.skip_extract:
        ensure_features(args.data, args.features, args.store, args.weights_dir, args.jobs)

    classifiers = [c for c in args.classifiers.split(",") if c]
    print(f"== compare: features {args.features} x classifiers {','.join(classifiers)} "
          f"({args.folds} subject folds + inner threshold CV + leaky split + official phase)", flush=True)
    runs = [(",".join(classifiers), args.out)] if not args.separate else [(c, args.out / c) for c in classifiers]
    total = 0.0
    for clfs, out in runs:
        r = run_measured(compare_cmd(args, clfs, out))
        total += r["seconds"]
        if r["rc"] != 0:
            print(r["stderr"][-3000:])
            print(f"compare {clfs} FAILED (rc {r['rc']})")
            return 1
        rec = json.loads((out / "run.json").read_text())
        print(f"compare [{clfs}]: {r['seconds']:.1f} s wall (grid {rec['seconds']['grid']:.1f} s), peak memory "
              f"{r['peak_tree_mb']:.0f} MB process tree / {r['peak_process_mb']:.0f} MB largest process")
        by_clf: dict[str, float] = {}
        for res in rec["results"]:
            by_clf[res["classifier"]] = by_clf.get(res["classifier"], 0.0) + res["fit_seconds"]
        for c, s in by_clf.items():
            if c == "vote":  # a vote's time is its members' (their predictions are averaged, nothing refitted)
                print(f"  {c:<10} no fits of its own (members' fits reused; their time: {s:.1f} s)")
                continue
            print(f"  {c:<10} fit time over {len(rec['feature_sets'])} feature sets: {s:7.1f} s (summed over folds)")
        for s in rec["skipped"]:
            print(f"  skipped {s['name']}: {s['reason']}")
        print("  best: " + r["stdout"].strip().splitlines()[0])
    verdict = "within" if total < BUDGET_S else "OVER"
    print(f"== total comparison wall time {total:.0f} s ({total / 60:.1f} min): {verdict} the {BUDGET_S / 60:.0f}-minute budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
