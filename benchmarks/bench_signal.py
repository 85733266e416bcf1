"""More signal per cell from the same frozen network? The deep extractor's input and view options against
RGB, subject-disjoint, on the same folds.

Usage::

    .venv/bin/python benchmarks/bench_signal.py [--data DIR] [--store DIR] [--weights-dir DIR]
        [--backbone inception_v3] [--variants grey,od,grey_tta8] [--out DIR]

One `compare` run (the pipeline function: one fold plan for every configuration) over the backbone's RGB
embedding and its variants (``<backbone>_<variant>``, see ``blastscan/features/deep_input.py``; ``+<variant>``
for the union of RGB and the variant, e.g. the mixed7 block beside the last one), each
with ``logreg`` and ``svm_pca`` at their defaults (nothing tuned), each also in a soft vote with
``size/logreg``. Prints one table: pooled out-of-fold ROC-AUC with its 95% subject-bootstrap interval,
weighted F1 and specificity at the shipped threshold rule (ALL recall 0.90, chosen on training folds), the
subject-level ROC-AUC, and the paired difference in ROC-AUC to the same classifier on RGB with a 95%
interval from resampling subjects (both configurations scored on the same resampled cells). Embeddings the
store lacks are computed first (slow: ``tta8`` is eight forward passes per cell).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ci(r, k):
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    return f"{r[k]:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{r[k]:.3f}"


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, groups: np.ndarray, *,
                          n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """ROC-AUC(a) - ROC-AUC(b) on the same cells, with a 95% interval from resampling subjects (groups)."""
    from sklearn.metrics import roc_auc_score

    diff = roc_auc_score(y, p_a) - roc_auc_score(y, p_b)
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if len(np.unique(y[idx])) < 2:
            continue
        out.append(roc_auc_score(y[idx], p_a[idx]) - roc_auc_score(y[idx], p_b[idx]))
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(diff), float(lo), float(hi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cnmc2019")
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("BLASTSCAN_STORE", "blastscan-store")))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights")))
    ap.add_argument("--backbone", default="inception_v3")
    ap.add_argument("--variants", default="grey,od,mixed7,grey_mixed7",
                    help="Comma-separated name suffixes (grey_tta8); +suffix joins that variant to RGB (+mixed7).")
    ap.add_argument("--classifiers", default="logreg,svm_pca")
    ap.add_argument("--param", action="append", default=[], metavar="CLF.NAME=VALUE",
                    help="Classifier parameter for every row, as compare's --param (e.g. logreg.C=0.01).")
    ap.add_argument("--out", type=Path, default=Path("blastscan-runs/bench-signal"))
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()

    from blastscan.dataset import build_manifest, inspect_cache
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.compare import compare
    from blastscan.report.results import SUBJECT_POOLED

    rgb = args.backbone
    # "grey" -> inception_v3_grey; "+mixed7" -> the union inception_v3+inception_v3_mixed7 (beside the last block)
    sets = [rgb] + [f"{rgb}+{rgb}_{v[1:]}" if v.startswith("+") else f"{rgb}_{v}"
                    for v in (v.strip() for v in args.variants.split(",")) if v]
    classifiers = args.classifiers.split(",")
    # a vote's member cannot be a union in compare's syntax: unions are compared alone
    votes = [f"{fs}/{clf}+size/logreg" for fs in sets for clf in classifiers if "+" not in fs]
    manifest = build_manifest(args.data, cache=inspect_cache(args.store))
    t0 = time.perf_counter()
    # no leaky per-image split: it is not the question here, and it would cost a sixth of the fits
    result = compare(manifest.df, ["size"] + sets, classifiers, args.store, args.out, settings=EvalSettings(leaky_folds=0),
                     ensembles=votes, params=args.param or None, extractor_options={"weights_dir": args.weights_dir},
                     jobs=args.jobs,
                     progress=True, dataset=str(args.data))
    secs = time.perf_counter() - t0
    d = result.run["data"]
    m = result.metrics
    pooled = m[(m["split"] == SUBJECT_POOLED) & m["headline"]].set_index("config")
    pred = result.predictions[result.predictions["split"] == "subject_cv"]
    key = "sha256" if "sha256" in pred.columns else "path"
    by_config = {c: g.set_index(key) for c, g in pred.groupby("config")}
    print(f"# {rgb}: input and view options against RGB. Subject-disjoint {result.run['n_splits']}-fold CV, pooled "
          f"out-of-fold: {d['n_images']} cells, {d['n_subjects']} subjects ({d['n_subjects_all']} ALL, "
          f"{d['n_subjects_hem']} HEM); the same folds for every row; threshold for ALL recall "
          f"{result.run['threshold']['target_recall']:.2f} chosen on training folds; 95% intervals from "
          f"{result.run['n_boot']} subject bootstraps; classifiers at their defaults"
          f"{' except ' + ', '.join(args.param) if args.param else ''}; {secs:.0f} s")
    print(f"{'configuration':<52} {'ROC-AUC [95% CI]':<24} {'dAUC vs RGB [95% CI]':<26} {'weighted F1':>11} "
          f"{'spec.':>6} {'subject AUC':>11}")
    for clf in classifiers:
        for vote in (False, True):
            base = f"vote({rgb}/{clf}+size/logreg)" if vote else f"{rgb}/{clf}"
            for fs in sets:
                if vote and "+" in fs:
                    continue
                name = f"vote({fs}/{clf}+size/logreg)" if vote else f"{fs}/{clf}"
                if name not in pooled.index:
                    print(f"{name:<52} (not evaluated)")
                    continue
                r = pooled.loc[name]
                delta = ""
                if fs != rgb and base in by_config and name in by_config:
                    a = by_config[name]
                    b = by_config[base].loc[a.index]
                    y = (a["label"] == "all").to_numpy().astype(int)
                    groups = a["group"].to_numpy() if "group" in a.columns else a["subject"].to_numpy()
                    dd, lo, hi = paired_auc_difference(y, a["p_all"].to_numpy(), b["p_all"].to_numpy(), groups)
                    delta = f"{dd:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                print(f"{name:<52} {_ci(r, 'roc_auc'):<24} {delta:<26} {r['weighted_f1']:>11.3f} "
                      f"{r['specificity']:>6.3f} {r['subject_roc_auc']:>11.3f}")
        print()
    if "size/logreg" in pooled.index:
        r = pooled.loc["size/logreg"]
        print(f"{'size/logreg':<52} {_ci(r, 'roc_auc'):<24} {'':<26} {r['weighted_f1']:>11.3f} "
              f"{r['specificity']:>6.3f} {r['subject_roc_auc']:>11.3f}")
    print(f"report: {result.run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
