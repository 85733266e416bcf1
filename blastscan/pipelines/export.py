"""Export a configuration of a compare run as a bundle: ``blastscan export``.

The configuration is refitted on every labelled image the run used, with the run's parameters, feature
store, extractor options, seed and threshold rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from blastscan.bundle import Bundle, save_bundle
from blastscan._io import check_writable_file
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.options import clean_options
from blastscan.pipelines.train import train_bundle

__all__ = ["read_run", "export_run"]


def read_run(run_dir: str | os.PathLike) -> dict:
    """The ``run.json`` of a compare run folder."""
    from blastscan.pipelines.runrecord import INCOMPLETE_MARK

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


def export_run(
    run_dir: str | os.PathLike,
    config_name: str,
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    inner_splits: int = 5,
    progress: bool = True,
) -> Bundle:
    """Refit configuration ``config_name`` (e.g. ``"handcrafted/svm"``) of a compare run on all the
    labelled images the run used, and save it as a bundle at ``out``.

    ``store`` and ``extractor_options`` override the recorded ones (e.g. when the store moved);
    ``inner_splits`` folds of a subject-disjoint CV choose the threshold.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    check_writable_file(out, "--out")
    configs = {c["name"]: c for c in run.get("configs", [])}
    if config_name not in configs:
        raise BlastscanError(f"--config {config_name}", f"not in this run; choose from: {', '.join(configs) or 'none'}")
    config = configs[config_name]
    used = _used_manifest(run_dir, run)
    store = Path(store) if store is not None else Path(run["store"])
    if not store.is_dir():
        raise BlastscanError(str(store), "the run's feature store is not there; give its new place (--store)")
    options = {**(run.get("extractor_options") or {}), **clean_options(extractor_options)}
    settings = EvalSettings.from_run(run, inner_folds=inner_splits)
    bundle = train_bundle(used, config["feature_set"], config["classifier"], store, params=config.get("params"),
                          tune=bool(config.get("tune")),
                          extractor_options=options, settings=settings, dataset=run.get("dataset"),
                          progress=progress)
    run_hash = (run.get("data") or {}).get("manifest_sha256")
    bundle.metadata["source_run"] = {
        "run_dir": str(run_dir), "config": config_name, "config_sha256": run.get("config_sha256"),
        "run_manifest_sha256": run_hash,
        "same_images_as_run": run_hash == bundle.metadata["training_data"]["manifest_sha256"],
    }
    save_bundle(bundle, out)
    return bundle
