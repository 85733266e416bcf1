"""Throughput of `score` against feature extraction alone, on real C-NMC cells, in one process.

Usage::

    .venv/bin/python benchmarks/bench_score.py [--data DIR] [--n 160] [--n-deep 32] [--jobs 2]
        [--weights-dir DIR] [--deep vgg16]

For each feature set: ``extract()`` of N cells into a fresh store (the manifest given, as `blastscan
extract` has it after reading the dataset), then ``score()`` of the same N image files with a bundle trained
on those features, into a fresh temporary store (score reads and hashes the files, recomputes the features,
predicts and writes both CSVs). Both paths are warmed up first (worker pool, deep model built), so the
figures compare steady-state work; each is timed ``--repeats`` times, alternated, and the best run counts
(other work on a shared machine only adds time). Prints images/s of each and the overhead of score over extraction
(target < 10%). The deep set runs only when weights are found (default ../shared/weights).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cells(data: Path, n: int) -> list[str]:
    """``n`` real cells from the subset's manifest, round-robin over subjects of both classes."""
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    by_subject = defaultdict(list)
    for r in rows:
        by_subject[(r["label"], r["subject"])].append(str(data / r["path"]))
    queues = list(by_subject.values())
    picked: list[str] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def bench(feature_set: str, paths: list[str], warm: list[str], jobs: int, options: dict, tmp: Path,
          repeats: int = 3) -> dict:
    from blastscan.dataset import build_manifest
    from blastscan.bundle import save_bundle
    from blastscan.pipelines.train import train_bundle
    from blastscan.pipelines.extract import extract
    from blastscan.pipelines.score import score

    manifest = build_manifest(paths, jobs=jobs).df
    # warm-up: worker pool / deep model, and a bundle to score with (trained on the benchmark cells)
    extract(build_manifest(warm).df, [feature_set], tmp / f"warm-{feature_set}", jobs=jobs,
            extractor_options=options, progress=False)
    store = tmp / f"store-{feature_set}"
    extract(manifest, [feature_set], store, jobs=jobs, extractor_options=options, progress=False)
    bundle = train_bundle(manifest, feature_set, "logreg", store, extractor_options=options, progress=False)
    path = save_bundle(bundle, tmp / f"{feature_set}.joblib")
    score(path, warm, tmp / "warm.csv", extractor_options=options, jobs=jobs, progress=False)
    t_extract, t_score, added = [], [], []
    for rep in range(repeats):  # alternated, best of each: the machine may be shared
        t0 = time.perf_counter()
        extract(manifest, [feature_set], tmp / f"fresh-{feature_set}-{rep}", jobs=jobs, extractor_options=options,
                progress=False)
        t_extract.append(time.perf_counter() - t0)
        inside = _timed_extract()
        t0 = time.perf_counter()
        try:
            result = score(path, paths, tmp / f"pred-{feature_set}.csv", extractor_options=options, jobs=jobs,
                           progress=False)
        finally:
            inside.restore()
        t_score.append(time.perf_counter() - t0)
        added.append(t_score[-1] - inside.seconds)
        assert result.n_scored + result.n_failed == len(paths)
    return {"n": len(paths), "extract_s": min(t_extract), "score_s": min(t_score),
            "all_extract_s": t_extract, "all_score_s": t_score, "added_s": min(added)}


class _timed_extract:
    """Counts the seconds score spends inside extract(): the rest is what scoring adds (reading and
    hashing the files, the model, the CSVs), measured in the same run and so immune to machine noise."""

    def __init__(self):
        import blastscan.pipelines.extract as ex

        self.module, self.original, self.seconds = ex, ex.extract, 0.0

        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        ex.extract = wrapped

    def restore(self):
        self.module.extract = self.original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cnmc2019")
    ap.add_argument("--n", type=int, default=160, help="cells for the handcrafted set")
    ap.add_argument("--n-deep", type=int, default=32, help="cells for the deep set")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--weights-dir", type=Path, default=ROOT.parent / "shared" / "weights")
    ap.add_argument("--deep", default="vgg16", help="deep feature set to time ('' to skip)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (alternated; the best counts)")
    args = ap.parse_args()
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no C-NMC subset at {args.data} (--data)")
    cases = [("handcrafted", args.n, {})]
    if args.deep and any(args.weights_dir.glob("*.h5")):
        cases.append((args.deep, args.n_deep, {"weights_dir": str(args.weights_dir)}))
    elif args.deep:
        print(f"{args.deep}: skipped (no weights in {args.weights_dir})")
    cells = _cells(args.data, max(n for _, n, _ in cases) + 8)
    print(f"jobs={args.jobs}, cores={os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        for fs, n, options in cases:
            r = bench(fs, cells[:n], cells[-8:], args.jobs, options, Path(tmp), args.repeats)
            ex_rate, sc_rate = r["n"] / r["extract_s"], r["n"] / r["score_s"]
            overhead = (r["score_s"] - r["extract_s"]) / r["extract_s"] * 100
            print(f"{fs:<12} score adds {r['added_s']:.2f} s to the extraction it runs: "
                  f"{r['added_s'] / r['extract_s'] * 100:.1f}% of extraction alone")
            print(f"{fs:<12} {r['n']} images: extract {r['extract_s']:.1f} s ({ex_rate:.1f} img/s), "
                  f"score {r['score_s']:.1f} s ({sc_rate:.1f} img/s): overhead {overhead:+.1f}% "
                  f"({'meets' if overhead < 10 else 'misses'} the < 10% target; runs: extract "
                  f"{', '.join(f'{t:.1f}' for t in r['all_extract_s'])} s, score "
                  f"{', '.join(f'{t:.1f}' for t in r['all_score_s'])} s)")


if __name__ == "__main__":
    main()
