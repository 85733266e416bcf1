"""Coverage of the blast-fraction interval on mixtures of real out-of-fold scores of known blast fraction.

Usage::

    .venv/bin/python benchmarks/bench_blast_fraction.py [--data DIR] [--store DIR] [--configs size/logreg,...]
                                                        [--reps 100] [--seed 0]

1. Out-of-fold P(ALL) of every labelled dev cell for each configuration, from the project's own
   subject-disjoint CV (``blastscan.evaluation.oof_predict``, 5 folds by subject, seed 0), on features
   already in the store (``extract`` them first).
2. A simulated patient: one ALL subject and one HEM subject of the dev data, picked at random among those
   with at least 20 cells (a subject of 1-3 cells cannot stand for a patient's spread of cells; most dev
   subjects have so few); k = round(f n) of its n cells drawn (with replacement) from the ALL subject's
   out-of-fold scores, n - k from the HEM subject's. Its true blast fraction is k / n.
3. The model "shipped" for that patient knows nothing of those two subjects: its threshold (ALL recall
   0.90) and its operating-point record (``operating_point_bootstrap``, 200 subject resamples) come from
   the out-of-fold scores of the other 47 subjects only.
4. ``blast_fraction`` on the patient's count of cells called ALL; covered when the 95% interval holds k / n.

Prints the coverage and mean width per blast fraction and per cell count, for the interval blastscan
now gives and for the old one (Wilson interval of the called share through the pooled correction).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
CELLS = (20, 50, 100, 300)
MIN_SOURCE_CELLS = 20  # subjects a simulated patient's cells are drawn from


def oof_scores(data: Path, store: Path, config: str, weights_dir: str | None, seed: int) -> pd.DataFrame:
    """Out-of-fold P(ALL) per labelled cell (``subject, y, p``) of ``config`` = ``SET/CLASSIFIER``."""
    from blastscan.dataset import build_manifest, inspect_cache, labelled_rows
    from blastscan.evaluation import oof_predict
    from blastscan.features.featureset import FeatureSet

    fs_name, clf = config.split("/")
    manifest = build_manifest(data, cache=inspect_cache(store), progress=False)
    rows, _ = labelled_rows(manifest.df)
    fm = FeatureSet(fs_name, {"weights_dir": weights_dir}).read(rows, store, dataset_hint=str(data))
    y = (fm.rows["label"] == "all").to_numpy().astype(int)
    groups = fm.rows["group"].to_numpy().astype(str)
    p = oof_predict(clf, None, fm.X.astype(np.float64), y, groups, n_splits=5, seed=seed)
    return pd.DataFrame({"subject": fm.rows["subject"].astype(str).to_numpy(), "y": y, "p": p})


def simulate(oof: pd.DataFrame, reps: int, seed: int, target_recall: float = 0.90) -> pd.DataFrame:
    from blastscan.evaluation.patient import blast_fraction, operating_point_bootstrap
    from blastscan.evaluation.thresholds import choose_threshold

    rng = np.random.default_rng(seed)
    by_subject = {s: g["p"].to_numpy() for s, g in oof.groupby("subject")}
    label = oof.groupby("subject")["y"].max()
    big = oof.groupby("subject").size() >= MIN_SOURCE_CELLS
    all_s, hem_s = sorted(label.index[(label == 1) & big]), sorted(label.index[(label == 0) & big])
    shipped: dict[tuple[str, str], tuple[float, dict]] = {}
    rows = []
    for f in FRACTIONS:
        for n in CELLS:
            for _ in range(reps):
                a, h = all_s[rng.integers(len(all_s))], hem_s[rng.integers(len(hem_s))]
                if (a, h) not in shipped:  # the model as shipped without these two subjects
                    rest = oof[~oof["subject"].isin([a, h])]
                    t = float(choose_threshold(rest["y"], rest["p"], rule="recall", target_recall=target_recall))
                    shipped[a, h] = t, operating_point_bootstrap(rest["y"], rest["p"], rest["subject"], t,
                                                                 seed=seed)
                t, boot = shipped[a, h]
                k = int(round(f * n))
                p = np.concatenate([rng.choice(by_subject[a], k), rng.choice(by_subject[h], n - k)])
                x = int((p >= t).sum())
                truth = k / n
                new = blast_fraction(x, n, boot["recall"], boot["specificity"], bootstrap=boot)
                old = blast_fraction(x, n, boot["recall"], boot["specificity"])
                rows.append({"fraction": f, "n_cells": n, "truth": truth, "all_subject": a, "hem_subject": h,
                             "est": new[0], "low": new[1], "high": new[2], "old_est": old[0], "old_low": old[1],
                             "old_high": old[2]})
    df = pd.DataFrame(rows)
    eps = 1e-9
    df["covered"] = (df["low"] - eps <= df["truth"]) & (df["truth"] <= df["high"] + eps)
    df["old_covered"] = (df["old_low"] - eps <= df["truth"]) & (df["truth"] <= df["old_high"] + eps)
    df["width"], df["old_width"] = df["high"] - df["low"], df["old_high"] - df["old_low"]
    df["zero_width"] = df["width"] <= eps
    return df


def _table(df: pd.DataFrame, by: str) -> str:
    t = df.groupby(by).agg(cases=("covered", "size"), coverage=("covered", "mean"), width=("width", "mean"),
                           old_coverage=("old_covered", "mean"), old_width=("old_width", "mean"),
                           abs_error=("est", lambda s: float(np.mean(np.abs(s - df.loc[s.index, "truth"])))))
    return t.to_string(float_format=lambda v: f"{v:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cnmc2019")
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("BLASTSCAN_STORE", "blastscan-store")))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights")))
    ap.add_argument("--configs", default="size/logreg,inception_v3/svm_pca")
    ap.add_argument("--reps", type=int, default=100, help="Simulated patients per (fraction, cell count).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oof-cache", type=Path, default=None,
                    help="Folder to keep the out-of-fold scores in (CSV per configuration), reused when there.")
    args = ap.parse_args()

    for config in args.configs.split(","):
        t0 = time.perf_counter()
        cache = args.oof_cache / f"{config.replace('/', '__')}.csv" if args.oof_cache else None
        if cache is not None and cache.is_file():
            oof = pd.read_csv(cache, dtype={"subject": str})
        else:
            oof = oof_scores(args.data, args.store, config, args.weights_dir, args.seed)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                oof.to_csv(cache, index=False)
        n_s = oof.groupby("subject")["y"].max()
        big = oof.groupby("subject").size() >= MIN_SOURCE_CELLS
        t1 = time.perf_counter()
        df = simulate(oof, args.reps, args.seed)
        print(f"\n== {config}: out-of-fold P(ALL) of {len(oof)} dev cells, {len(n_s)} subjects "
              f"({int(n_s.sum())} ALL, {int((n_s == 0).sum())} HEM), subject-disjoint 5-fold CV "
              f"({t1 - t0:.0f} s); {len(df)} simulated patients ({time.perf_counter() - t1:.0f} s) drawn from the "
              f"{int((big & (n_s == 1)).sum())} ALL and {int((big & (n_s == 0)).sum())} HEM subjects with "
              f">= {MIN_SOURCE_CELLS} cells")
        print(f"nominal 95% interval covers the true blast fraction in {df['covered'].mean():.1%} of cases "
              f"(old interval: {df['old_covered'].mean():.1%}); zero-width intervals: {int(df['zero_width'].sum())}; "
              f"worst cell (fraction x cells): "
              f"{df.groupby(['fraction', 'n_cells'])['covered'].mean().min():.1%}")
        print("by blast fraction:\n" + _table(df, "fraction"))
        print("by cell count:\n" + _table(df, "n_cells"))
        worst = df.groupby("hem_subject")["covered"].agg(["mean", "size"]).sort_values("mean").head(3)
        print("HEM subjects behind the fewest covered cases (coverage, cases): "
              + ", ".join(f"{s} {m:.0%} ({n})" for s, (m, n) in worst.iterrows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
