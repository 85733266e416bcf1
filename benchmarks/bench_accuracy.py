"""What each modelling lever does to subject-disjoint accuracy on the real C-NMC subset (cached features).

Usage::

    .venv/bin/python benchmarks/bench_accuracy.py [--data DIR] [--store DIR] [--weights-dir DIR] [--quick]

One `compare` run (the pipeline function, the same folds for every configuration) over the levers:
single feature sets x classifiers, concatenation of feature sets, PCA before the SVM (svm_pca), and soft
votes across feature sets; xgboost is included unless --quick. Prints one table, best first: pooled
out-of-fold weighted F1 and ROC-AUC with their 95% subject-bootstrap intervals, specificity at the
ALL-recall target, and the subject-level ROC-AUC; then the opt-in within-subject view of the best
configuration. compare's defaults (classifiers, DEFAULT_ENSEMBLES) are chosen from this table.
Features missing from the store are computed first (slow the first time: deep embeddings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FEATURES = ["size", "shape", "color", "texture", "chromatin", "handcrafted", "inception_v3", "vgg16",
            "handcrafted+inception_v3", "size+inception_v3"]
VOTES = ["inception_v3/svm_pca+size/logreg", "inception_v3/svm_pca+vgg16/svm_pca+size/logreg",
         "inception_v3/svm+size/logreg", "inception_v3/svm_pca+shape/logreg", "vgg16/svm_pca+size/logreg"]


def _ci(r, k):
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    return f"{r[k]:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{r[k]:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cnmc2019")
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("BLASTSCAN_STORE", "blastscan-store")))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights")))
    ap.add_argument("--out", type=Path, default=Path("blastscan-runs/bench-accuracy"))
    ap.add_argument("--quick", action="store_true", help="No xgboost (it takes most of the time).")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()

    from blastscan.dataset import build_manifest, inspect_cache
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.compare import compare
    from blastscan.report.results import SUBJECT_POOLED, WITHIN_SUBJECT, rank_configs

    classifiers = ["logreg", "svm", "svm_pca"] + ([] if args.quick else ["xgboost"])
    manifest = build_manifest(args.data, cache=inspect_cache(args.store))
    t0 = time.perf_counter()
    result = compare(manifest.df, FEATURES, classifiers, args.store, args.out, settings=EvalSettings(),
                     ensembles=VOTES, extractor_options={"weights_dir": args.weights_dir}, jobs=args.jobs,
                     progress=True, dataset=str(args.data))
    secs = time.perf_counter() - t0
    d = result.run["data"]
    print(f"# subject-disjoint {result.run['n_splits']}-fold CV, pooled out-of-fold: {d['n_images']} cells, "
          f"{d['n_subjects']} subjects ({d['n_subjects_all']} ALL, {d['n_subjects_hem']} HEM); threshold for ALL "
          f"recall {result.run['threshold']['target_recall']:.2f} chosen on training folds; 95% intervals from "
          f"{result.run['n_boot']} subject bootstraps; {len(rank_configs(result.metrics))} configurations "
          f"compared on the same folds (the best of many is optimistic); {secs:.0f} s")
    print(f"{'configuration':<58} {'weighted F1 [95% CI]':<24} {'ROC-AUC [95% CI]':<24} {'spec.':>6} "
          f"{'recall':>6} {'subject AUC [95% CI]':<24} {'fit s':>6}")
    fit = {r["name"]: r["fit_seconds"] for r in result.run["results"]}
    for _, r in rank_configs(result.metrics).iterrows():
        print(f"{r['config']:<58} {_ci(r, 'weighted_f1'):<24} {_ci(r, 'roc_auc'):<24} {r['specificity']:>6.3f} "
              f"{r['recall_all']:>6.3f} {_ci(r, 'subject_roc_auc'):<24} {fit.get(r['config'], float('nan')):>6.1f}")
    m = result.metrics
    ws = m[(m["split"] == WITHIN_SUBJECT) & (m["config"] == result.best)]
    if len(ws):
        r = ws.iloc[0]
        print(f"\nopt-in within-subject view of {result.best} (uses other cells of the same patient, never the "
              f"headline): weighted F1 {_ci(r, 'weighted_f1')}, ROC-AUC {_ci(r, 'roc_auc')}")
    best = m[(m["split"] == SUBJECT_POOLED) & (m["config"] == result.best) & m["headline"]].iloc[0]
    print(f"\nbest: {result.best}: weighted F1 {best['weighted_f1']:.3f}, ROC-AUC {best['roc_auc']:.3f} "
          f"(aim: >= 0.85 and >= 0.88); report: {result.run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
