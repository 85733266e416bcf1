"""Throughput and peak memory of the deep backbones: bare forward pass vs the full extract path.

Usage::

    .venv/bin/python benchmarks/bench_deep.py [--backbones inception_v3,vgg16] [--n 256] [--batch-size 32]
        [--input-size S] [--data DIR] [--weights-dir DIR | --random-weights]

For each backbone, in one process and with the same extractor instance (so the same compiled forward):

* ``bare``: images/s of the compiled forward pass alone (uint8 -> preprocess_input -> network, the
  function extract uses) over ``n`` preloaded, decoded and resized images, measured before and after
  the extract runs and averaged (the machine may be shared);
* ``extract``: images/s of ``blastscan.pipelines.extract.extract`` into a fresh temporary store for the
  same ``n`` files (read, decode, resize, preprocess, forward, write the store), and its ratio to bare
  (target >= 90%: decoding is overlapped with inference);
* the peak resident memory (sampled from /proc/self/status every 20 ms) during extract of ``n`` and of
  ``2n`` images: it should stay flat, since batches are streamed and the store is written in chunks.

The model is built and traced once before timing; that one-off cost is printed on its own.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def peak_rss(result: dict):
    """Sample this process's resident memory while the block runs; ``result['peak_mb']`` = the maximum."""
    stop = threading.Event()
    result["start_mb"] = result["peak_mb"] = _rss_mb()

    def sample():
        while not stop.is_set():
            result["peak_mb"] = max(result["peak_mb"], _rss_mb())
            stop.wait(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield result
    finally:
        stop.set()
        t.join()
        result["peak_mb"] = max(result["peak_mb"], _rss_mb())


def cell_paths(data: Path, n: int) -> list[str]:
    """``n`` distinct real cells from the dataset's manifest.csv (first rows, both classes interleaved)."""
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in sorted({r["label"] for r in rows})}
    mixed = [r for group in zip(*by_label.values()) for r in group]
    if len(mixed) < n:
        raise SystemExit(f"only {len(mixed)} cells available in {data}, asked for {n}")
    return [str(data / r["path"]) for r in mixed[:n]]


def bench_backbone(name: str, paths: list[str], options: dict) -> None:
    import numpy as np

    from blastscan.dataset import build_manifest, load_image
    from blastscan.pipelines.extract import _extractor, extract

    n = len(paths) // 2
    manifest = build_manifest(paths, progress=False).df
    first, both = manifest.iloc[:n], manifest
    ext = _extractor(name, options)  # the instance extract() will use: same compiled forward
    bs = ext.batch_size

    t0 = time.perf_counter()
    images = [ext.resize(load_image(p)) for p in first["path"]]
    batches = [np.stack(images[i:i + bs]) for i in range(0, n, bs)]
    ext.forward(batches[0])  # build, load weights, trace the graph
    warm = time.perf_counter() - t0

    def bare_rate() -> float:
        t0 = time.perf_counter()
        for b in batches:
            ext.forward(b)
        return n / (time.perf_counter() - t0)

    bare = [bare_rate()]
    rates, peaks = {}, {}
    for label, df in (("n", first), ("2n", both)):
        with tempfile.TemporaryDirectory(prefix="bench-deep-") as store, peak_rss({}) as mem:
            t0 = time.perf_counter()
            summary = extract(df, [name], store, extractor_options=options, progress=False)
            rates[label] = len(df) / (time.perf_counter() - t0)
            assert summary.runs[0].computed == len(df), summary.format()
        peaks[label] = mem["peak_mb"]
    # The machine may be shared: bare is measured before and after extract, and averaged.
    bare.append(bare_rate())
    bare_mean = sum(bare) / 2

    print(f"{name} (input {ext.input_size}, batch {bs}, {ext.identity}); build + trace + load {warm:.1f} s")
    print(f"  bare forward    {n:5d} images: {bare_mean:6.1f} images/s (before/after: {bare[0]:.1f}/{bare[1]:.1f})")
    print(f"  extract (full)  {n:5d} images: {rates['n']:6.1f} images/s = {100 * rates['n'] / bare_mean:.0f}% of bare "
          f"(target >= 90%)")
    print(f"  extract (full)  {2 * n:5d} images: {rates['2n']:6.1f} images/s")
    print(f"  peak RSS during extract: {peaks['n']:.0f} MB for {n} images, {peaks['2n']:.0f} MB for {2 * n} "
          f"({peaks['2n'] - peaks['n']:+.0f} MB)")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="inception_v3,vgg16")
    ap.add_argument("--n", type=int, default=256, help="Images per run (memory is also measured at 2n).")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cnmc2019"))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", "/work/shared/weights"))
    ap.add_argument("--random-weights", action="store_true")
    args = ap.parse_args()

    options = {"weights_dir": args.weights_dir, "random_weights": args.random_weights,
               "batch_size": args.batch_size, "input_size": args.input_size}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    paths = cell_paths(args.data, 2 * args.n)
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; {args.n} and {2 * args.n} real cells "
          f"from {args.data}")
    for name in args.backbones.split(","):
        bench_backbone(name.strip(), paths, options)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
