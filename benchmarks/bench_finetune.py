"""A fine-tuned InceptionV3 (last blocks on cached mixed8 activations) beside the best frozen configuration,
on the same subject-disjoint folds of the real C-NMC dev data.

Usage::

    .venv/bin/python benchmarks/bench_finetune.py [--data DIR] [--store DIR] [--weights-dir DIR]
        [--folds 5] [--inner-folds 3] [--epochs 8] [--patience 2] [--subjects N] [--precision float32]

One `compare` run (the pipeline function) of ``inception_v3/svm_pca`` and ``inception_v3/finetune``: the same
outer folds, thresholds for the ALL-recall target chosen on out-of-fold predictions of each training part
(inner fits, never the test fold), so the finetune row costs one training per outer *and* inner fit. The
per-image (leaky) split is off, and the 11 preliminary-test cells of the dev data are left out so that no
extra "official phase" fits run. ``--subjects N`` keeps the first N subjects of each class ratio (a reduced
run, printed as such). Prints weighted F1 at the shipped operating point, ROC-AUC (the mean within the outer
folds, which ranks; pooled over the folds on raw scores; pooled on calibrated scores), subject-level AUC
(with 95% subject-bootstrap intervals), the fit seconds of each configuration and the machine load.

The mixed8 activations are computed into the store first when missing (on a 2-core AMD EPYC with avx512_bf16 under load:
about 6 min for the 2,301 dev cells in float32, 3 min with --precision bf16; 192 MB).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the shared data beside the checkout (/work/main) or beside the worktrees (/work/wt/NAME)
SHARED = next((p / "shared" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared")


def _ci(r, k):
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    return f"{r[k]:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{r[k]:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cnmc2019")
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("BLASTSCAN_STORE", "blastscan-store")))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", str(SHARED / "weights")))
    ap.add_argument("--out", type=Path, default=Path("blastscan-runs/bench-finetune"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--inner-folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--subjects", type=int, default=0, help="Keep only N subjects (0: all): a reduced run.")
    ap.add_argument("--precision", default="float32", help="Of the cached activations and the frozen embedding.")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    os.environ.setdefault("BLASTSCAN_WEIGHTS_DIR", str(args.weights_dir))  # the blocks' ImageNet start

    import numpy as np

    from blastscan.dataset import build_manifest, inspect_cache
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.compare import compare
    from blastscan.report.results import rank_configs

    df = build_manifest(args.data, cache=inspect_cache(args.store)).df
    df = df[df["source_split"].astype(str) != "prelim"]
    reduced = ""
    if args.subjects:
        by = df.groupby("subject")["label"].first()
        rng = np.random.default_rng(0)
        keep = []
        for label in ("all", "hem"):  # the dev data's class ratio of subjects, seeded
            names = sorted(by[by == label].index.astype(str))
            k = max(2, round(args.subjects * len(names) / len(by)))
            keep += list(rng.choice(names, size=min(k, len(names)), replace=False))
        df = df[df["subject"].astype(str).isin(keep)]
        reduced = f"REDUCED: {len(keep)} of {len(by)} subjects; "
    settings = EvalSettings(folds=args.folds, inner_folds=args.inner_folds, leaky_folds=0, n_boot=args.n_boot)
    params = {"finetune": {"epochs": args.epochs, "patience": args.patience}}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    result = compare(df, ["inception_v3"], ["svm_pca", "finetune"], args.store, args.out, settings=settings,
                     params=params, extractor_options={"weights_dir": args.weights_dir, "precision": args.precision},
                     jobs=1, progress=True, dataset=str(args.data))
    secs = time.perf_counter() - t0
    d = result.run["data"]
    print(f"# {reduced}subject-disjoint {result.run['n_splits']}-fold CV, pooled out-of-fold: {d['n_images']} cells, "
          f"{d['n_subjects']} subjects ({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM); threshold for ALL "
          f"recall {result.run['threshold']['target_recall']:.2f} chosen on inner out-of-fold predictions of each "
          f"training part (--inner-folds {args.inner_folds}); 95% intervals from {result.run['n_boot']} subject bootstraps; finetune: up to "
          f"{args.epochs} epochs, patience {args.patience}; {secs:.0f} s; load {load0[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    # ROC-AUC: the mean within the outer folds (what ranks), then pooled raw scores, then pooled calibrated
    print(f"{'configuration':<26} {'weighted F1 [95% CI]':<24} {'AUC folds':>9} {'raw':>6} "
          f"{'calibrated ROC-AUC [95% CI]':<27} {'spec.':>6} {'recall':>6} {'subject AUC [95% CI]':<24} {'fit s':>7}")
    fit = {r["name"]: r["fit_seconds"] for r in result.run["results"]}
    for _, r in rank_configs(result.metrics).iterrows():
        print(f"{r['config']:<26} {_ci(r, 'weighted_f1'):<24} {r.get('roc_auc_within_folds', float('nan')):>9.3f} "
              f"{r.get('roc_auc_raw', float('nan')):>6.3f} {_ci(r, 'roc_auc'):<27} {r['specificity']:>6.3f} "
              f"{r['recall_all']:>6.3f} {_ci(r, 'subject_roc_auc'):<24} {fit.get(r['config'], float('nan')):>7.1f}")
    for s in result.skipped:
        print(f"skipped: {s['name']}: {s['reason']}")
    print(f"run folder: {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
