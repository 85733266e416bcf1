"""Export a configuration of a compare run as a bundle: ``blastscan export``.

The configuration is refitted on every labelled image the run used, with the run's parameters, feature
store, extractor options, seed and threshold rule. Its calibration map and threshold come from the procedure
the run measured per outer fold (:func:`blastscan.evaluation.decision.decide` on an inner subject-disjoint
CV with as many folds as the run's inner CVs), now over all the run's subjects; the operating point the
bundle reports (ALL recall, specificity, with subject-bootstrap intervals) is the run's outer-fold result of
that procedure, read from its metrics.csv.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from blastscan.bundle import Bundle, save_bundle
from blastscan._io import check_writable_file
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.evaluation.decision import threshold_spread
from blastscan.options import DeepOptions
from blastscan.pipelines.runrecord import INCOMPLETE_MARK
from blastscan.pipelines.train import train_bundle
from blastscan.report.results import OPERATING, SUBJECT_POOLED

__all__ = ["read_run", "export_run", "run_estimate"]


def read_run(run_dir: str | os.PathLike) -> dict:
    """The ``run.json`` of a compare run folder."""
    run_dir = Path(run_dir)
    if (run_dir / INCOMPLETE_MARK).exists():
        raise BlastscanError(str(run_dir), "an incomplete compare run (it was stopped before the end); "
                                           "run compare again")
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        raise BlastscanError(str(run_dir), "not a compare run folder (no run.json)") from None
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(run_dir / "run.json"), f"unreadable ({exc})") from None
    if not isinstance(run, dict) or not isinstance(run.get("configs"), list):
        raise BlastscanError(str(run_dir / "run.json"), "not a compare run record (expected an object with configs)")
    return run


def _used_manifest(run_dir: Path, run: dict) -> pd.DataFrame:
    path = run_dir / run.get("manifest", "manifest.parquet")
    try:
        manifest = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(path), f"unreadable ({exc})") from None
    return manifest[manifest["used"].fillna(False).astype(bool)].drop(columns=["used"])


def _resolve_config(run: dict, config_name: str) -> tuple[dict, str]:
    """The run's record of ``config_name`` (a configuration collapsed into a twin resolves to the twin)."""
    configs = {c["name"]: c for c in run.get("configs", [])}
    name = (run.get("same_as") or {}).get(config_name, config_name)
    if name not in configs:
        raise BlastscanError(f"--config {config_name}", f"not in this run; choose from: {', '.join(configs) or 'none'}")
    return configs[name], name


def run_estimate(run_dir: str | os.PathLike, run: dict, config_name: str, rule: str,
                 target_recall: float) -> dict:
    """The operating point the run measured for ``config_name`` at ``rule`` (and ``target_recall``): its
    pooled outer-fold metrics with subject-bootstrap intervals, and the per-fold thresholds."""
    path = Path(run_dir) / "metrics.csv"
    try:
        m = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise BlastscanError(str(path), f"unreadable ({exc})") from None
    m = m[m["config"] == config_name]
    record = next((r for r in run.get("results", []) if r.get("name") == config_name), {})
    if rule == "recall":
        sel = m[(m["split"] == OPERATING) & (np.isclose(m["target_recall"].astype(float), target_recall))]
        measured = sorted(m.loc[m["split"] == OPERATING, "target_recall"].astype(float).unique())
        per_fold = (record.get("target_thresholds") or {}).get(f"{target_recall:.2f}")
        if not len(sel):  # a run from before operating points: its headline row, when it is that target
            rt = run.get("threshold") or {}
            if rt.get("rule") == "recall" and np.isclose(float(rt.get("target_recall", -1)), target_recall):
                sel = m[(m["split"] == SUBJECT_POOLED) & (m["headline"].astype(bool))]
                per_fold = (record.get("fold_thresholds") or {}).get("recall")
        if not len(sel):
            have = ", ".join(f"{t:.2f}" for t in measured) or "none"
            raise BlastscanError(f"--target-recall {target_recall:.2f}",
                                 f"this run did not measure that target (it measured: {have}); choose one of those, "
                                 f"or run compare with --target-recall {target_recall:.2f}")
    else:
        sel = m[(m["split"] == SUBJECT_POOLED) & (m["threshold_rule"] == rule)]
        per_fold = (record.get("fold_thresholds") or {}).get(rule)
        if not len(sel):
            raise BlastscanError(f"--config {config_name}", f"the run has no '{rule}' rule results")
    r = sel.iloc[0]

    def num(k):
        v = r.get(k)
        return None if v is None or pd.isna(v) else float(v)

    metrics = {k: num(k) for k in ("weighted_f1", "f1_all", "f1_hem", "recall_all", "specificity",
                                   "balanced_accuracy", "roc_auc", "pr_auc")}
    metrics.update({k: (int(r[k]) if k in r and pd.notna(r[k]) else None)
                    for k in ("n", "n_all", "n_hem", "n_subjects", "tn", "fp", "fn", "tp")})
    ci = {k: [num(f"{k}_ci_low"), num(f"{k}_ci_high")] for k in ("recall_all", "specificity", "weighted_f1", "roc_auc")
          if num(f"{k}_ci_low") is not None}
    if "roc_auc" not in ci:  # the operating-point rows carry the threshold-free AUC's interval on the headline row
        head = m[(m["split"] == SUBJECT_POOLED) & (m["headline"].astype(bool))]
        if len(head) and pd.notna(head.iloc[0].get("roc_auc_ci_low")):
            ci["roc_auc"] = [float(head.iloc[0]["roc_auc_ci_low"]), float(head.iloc[0]["roc_auc_ci_high"])]
    per_fold = [float(x) for x in per_fold] if per_fold else []
    return {"metrics": metrics, "ci": ci, "fold_thresholds": per_fold, "threshold_spread": threshold_spread(per_fold),
            "n_splits": int(run.get("n_splits", 0)), "inner_mode": run.get("threshold_inner_mode") or (
                "pairs" if "other outer folds" in str(run.get("threshold_inner_cv", "")) else "nested"),
            "n_boot": int(run.get("n_boot", 0)), "source": f"compare run {run_dir}",
            "split": (f"the compare run's outer subject-disjoint {run.get('n_splits')}-fold CV: each fold's threshold "
                      f"chosen on its training part by the shipped procedure, measured on held-out subjects "
                      f"({metrics['n_subjects']} subjects, {metrics['n']} cells)")}


def export_run(
    run_dir: str | os.PathLike,
    config_name: str,
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    target_recall: float | None = None,
    progress: bool = True,
    embed: bool = True,
) -> Bundle:
    """Refit configuration ``config_name`` (e.g. ``"handcrafted/svm"``) of a compare run on all the
    labelled images the run used, and save it as a bundle at ``out``.

    ``store`` and ``extractor_options`` override the recorded ones (e.g. when the store moved);
    ``target_recall`` picks another operating point the run measured (default: the run's). A ``.bsb``
    ``out`` writes the data-only bundle; ``embed`` puts the backbones' ONNX graphs in it.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    check_writable_file(out, "--out")
    config, name = _resolve_config(run, config_name)
    used = _used_manifest(run_dir, run)
    store = Path(store) if store is not None else Path(run["store"])
    if not store.is_dir():
        raise BlastscanError(str(store), "the run's feature store is not there; give its new place (--store)")
    options = DeepOptions.from_mapping(run.get("extractor_options"), f"{run_dir}: extractor_options").replace(
        **DeepOptions.from_mapping(extractor_options).changed())
    overrides = {"inner_folds": int(run.get("inner_splits", 3)) or 3, "n_boot": int(run.get("n_boot", 1000))}
    if target_recall is not None:
        overrides["target_recall"] = float(target_recall)
    settings = EvalSettings.from_run(run, **overrides)
    estimate = run_estimate(run_dir, run, name, settings.threshold_rule, settings.target_recall)
    bundle = train_bundle(used, config["feature_set"], config["classifier"], store, params=config.get("params"),
                          tune=bool(config.get("tune")),
                          extractor_options=options, settings=settings, dataset=run.get("dataset"),
                          progress=progress, estimate=estimate)
    run_hash = (run.get("data") or {}).get("manifest_sha256")
    bundle.metadata["source_run"] = {
        "run_dir": str(run_dir), "config": name, "asked_for": config_name, "config_sha256": run.get("config_sha256"),
        "run_manifest_sha256": run_hash,
        "same_images_as_run": run_hash == bundle.metadata["training_data"]["manifest_sha256"],
    }
    save_bundle(bundle, out, embed=embed, extractor_options=options)
    return bundle
