"""Throughput, speed-up over a plain scikit-image baseline, cache speed-up and memory of `handcrafted`.

`handcrafted` is the union of the shape, color, texture and chromatin families, computed from one
segmentation per image (as `blastscan extract` does). With --old-tree DIR (a checkout or `git archive` of
an older blastscan), the old and the new code are timed side by side in alternating subprocesses on the
same cells, so a machine loaded by others slows both alike and their ratio stays meaningful.

Usage: .venv/bin/python benchmarks/bench_handcrafted.py [--n 2301] [--jobs 2] [--data DIR] [--old-tree DIR]
Prints a table of figures against the targets (>= 20 images/s/core, >= 2x baseline, cached >= 50x).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cnmc2019"


def baseline_features(img: np.ndarray) -> list[float]:
    """A straightforward per-family implementation: every family re-segments the whole image, builds its
    own regionprops and copies, and the GLCM uses 256 levels over the whole 450 x 450 image."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2gray, rgb2hed, rgb2lab
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    def masks(im):
        cell = ndi.binary_fill_holes(im.max(axis=2) > 10)
        red = ndi.gaussian_filter(im[..., 0].astype(float), 2)
        nuc = ndi.binary_opening(ndi.binary_fill_holes(ndi.binary_closing((red <= threshold_otsu(red[cell])) & cell)))
        return cell, nuc

    out: list[float] = []
    cell, nuc = masks(img.copy())  # shape family
    for m in (cell, nuc):
        p = max(regionprops(label(m)), key=lambda r: r.area)
        out += [p.area, p.perimeter_crofton, p.equivalent_diameter_area, p.axis_major_length, p.axis_minor_length,
                p.eccentricity, p.solidity, p.extent, p.feret_diameter_max, *p.moments_hu]
    cell, nuc = masks(img.copy())  # colour family
    for m in (cell, nuc, cell & ~nuc):
        for space in (img / 255.0, rgb2lab(img), rgb2hed(img)):
            v = space[m if m.sum() > 50 else cell]
            out += [*v.mean(0), *v.std(0), *np.percentile(v, (10, 50, 90), axis=0).ravel()]
    cell, _ = masks(img.copy())  # texture family
    grey = (rgb2gray(img) * 255).astype(np.uint8)
    glcm = graycomatrix(grey, (1, 2, 4), (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4), levels=256, symmetric=True, normed=True)
    for prop in ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation"):
        out += graycoprops(glcm, prop).mean(1).tolist()
    lbp = local_binary_pattern(grey, 8, 1, "uniform")
    out += np.bincount(lbp[cell].astype(int), minlength=10).tolist()
    for s in (1, 2, 4, 8):
        out.append(float(np.abs(ndi.gaussian_laplace(grey.astype(float), s)[cell]).mean()))
    return out


def timed(fn, paths) -> tuple[float, int]:
    """CPU seconds per image (this process, one thread of work) and the number of failures."""
    from blastscan.dataset import load_image
    from blastscan.errors import BlastscanError

    failed = 0
    c0 = time.process_time()
    for p in paths:
        try:
            fn(load_image(p))
        except BlastscanError:
            failed += 1
    return (time.process_time() - c0) / len(paths), failed


def rss_after(paths: list[str]) -> float:
    """Peak RSS (MiB) of a fresh process that featurises ``paths``."""
    code = ("import sys,resource;from blastscan.dataset import load_image;"
            "from blastscan.features.handcrafted import HandcraftedExtractor as H;e=H()\n"
            "for p in sys.argv[1:]:\n    try: e.compute(load_image(p))\n    except Exception: pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


_CPU_PER_IMAGE = (
    "import sys,time;from blastscan.dataset import load_image;"
    "from blastscan.features.handcrafted import HandcraftedExtractor as H;e=H()\n"
    "imgs=[load_image(p) for p in sys.argv[1:]]\nt=time.process_time()\n"
    "for im in imgs:\n    try: e.compute(im)\n    except Exception: pass\n"
    "print((time.process_time()-t)/len(imgs))")


def old_vs_new(paths: list[str], old_tree: str, rounds: int = 3) -> tuple[float, float]:
    """Median CPU seconds per image of the old and the new code, timed in alternating subprocesses."""
    env_new = {**os.environ, "PYTHONPATH": str(ROOT)}
    env_old = {**os.environ, "PYTHONPATH": str(old_tree)}
    old, new = [], []
    for _ in range(rounds):
        for env, out in ((env_old, old), (env_new, new)):
            r = subprocess.run([sys.executable, "-c", _CPU_PER_IMAGE, *paths], capture_output=True, text=True,
                               check=True, env=env)
            out.append(float(r.stdout.strip().splitlines()[-1]))
    return float(np.median(old)), float(np.median(new))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=None, help="cells to use (default: all)")
    ap.add_argument("--baseline-n", type=int, default=60, help="cells for the (slow) baseline")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--no-cli", action="store_true", help="skip timing the CLI twice")
    ap.add_argument("--old-tree", default=None, help="folder holding an older blastscan package to time side by side")
    ap.add_argument("--quick", action="store_true", help="only the per-core figures (and --old-tree)")
    args = ap.parse_args()

    from blastscan.dataset import build_manifest
    from blastscan.features.handcrafted import HandcraftedExtractor
    from blastscan.pipelines.extract import extract

    m = pd.read_csv(Path(args.data) / "manifest.csv")
    m = m.sample(frac=1.0, random_state=0) if args.n is None else m.sample(min(args.n, len(m)), random_state=0)
    paths = [str(Path(args.data) / p) for p in m["path"]]
    n = len(paths)
    ext = HandcraftedExtractor()
    rows = []

    per_img, failed = timed(ext.compute, paths)
    rows.append(("handcrafted, images/s per core (CPU time, decode incl.)", f"{1 / per_img:.1f}", ">= 20"))
    rows.append(("handcrafted, ms per image", f"{per_img * 1000:.1f}", "<= 50"))
    rows.append(("segmentation failures", f"{failed} / {n}", "few"))
    if args.old_tree:
        sub = paths[: min(n, 200)]
        t_old, t_new = old_vs_new(sub, args.old_tree)
        rows.append((f"old code ({args.old_tree}), ms per image, {len(sub)} cells", f"{t_old * 1000:.1f}", ""))
        rows.append(("new code, ms per image, same cells, alternating", f"{t_new * 1000:.1f}", ""))
        rows.append(("new / old throughput ratio", f"{t_old / t_new:.2f}", ">= 1 (same load)"))
    if args.quick:
        _print(rows, n, args.data, None)
        return
    nb = min(args.baseline_n, n)
    base_img, _ = timed(baseline_features, paths[:nb])
    ours_b, _ = timed(ext.compute, paths[:nb])
    rows.append((f"plain skimage baseline, ms per image ({nb} cells)", f"{base_img * 1000:.1f}", ""))
    rows.append(("speed-up over baseline", f"{base_img / ours_b:.1f}x", ">= 2x"))

    files = pd.DataFrame({"path": paths})
    t0 = time.perf_counter()
    manifest = build_manifest(paths, jobs=args.jobs, progress=False).df
    t_manifest = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        s1 = extract(manifest, "handcrafted", store, jobs=args.jobs, progress=False)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract(manifest, "handcrafted", store, jobs=args.jobs, progress=False)
        t_cached = time.perf_counter() - t0
    rows.append((f"manifest build ({len(files)} files, {args.jobs} jobs), s", f"{t_manifest:.2f}", "separate"))
    rows.append((f"extract() first run, {args.jobs} jobs, s (images/s)", f"{t_first:.2f} ({n / t_first:.1f})", ""))
    rows.append(("extract() cached second run, s", f"{t_cached:.3f}", ""))
    rows.append(("cached speed-up, extract()", f"{t_first / t_cached:.0f}x", ">= 50x"))
    if not args.no_cli:
        exe = str(Path(sys.executable).with_name("blastscan"))
        with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as ds:
            listing = Path(ds) / "cells.csv"
            m.assign(path=paths)[["path", "label", "subject"]].to_csv(listing, index=False)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                subprocess.run([exe, "extract", str(listing), "--store", store, "-j", str(args.jobs), "-q"],
                               check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
        rows.append(("CLI `blastscan extract` first / second run, s", f"{times[0]:.1f} / {times[1]:.1f}", ""))
        rows.append(("cached speed-up, whole CLI (manifest included)", f"{times[0] / times[1]:.1f}x", "info"))
    half = paths[: max(n // 2, 1)]
    rows.append((f"peak RSS, {len(half)} vs {2 * len(half)} images, MiB",
                 f"{rss_after(half):.0f} vs {rss_after(paths[: 2 * len(half)]):.0f}", "flat"))
    rows.append(("features", str(len(ext.feature_names)), ">= 100"))
    _print(rows, n, args.data, s1.runs[0].computed)


def _print(rows, n, data, computed) -> None:
    print(f"\nbench_handcrafted: {n} real cells from {data}" + (f"; first run computed {computed}" if computed else ""))
    w = max(len(r[0]) for r in rows)
    print(f"{'figure':<{w}}  {'value':>16}  target")
    for name, value, target in rows:
        print(f"{name:<{w}}  {value:>16}  {target}")


if __name__ == "__main__":
    main()
