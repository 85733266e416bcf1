"""The run folder of a comparison: its ``run.json`` record (config, versions, data hashes, folds) and the
files written beside it (metrics, predictions, per-subject table, manifest, report).

The folder is written whole or not at all: its files go into a temporary folder beside it
(``.<name>.<pid>.tmp``, holding an ``INCOMPLETE`` marker until the end), which is renamed into place when
complete. A rerun into an existing run folder **replaces it whole** (no file of the old run stays beside
the new ``run.json``); a folder that is not a run folder and not empty is refused, never replaced. A lock
beside the folder (:func:`run_dir_lock`, held for the whole comparison) makes a second ``compare`` into the
same ``--out`` fail at once with one line; temporary folders of killed runs are removed by the next run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from blastscan import provenance as prov
from blastscan._io import WriteError, atomic_path, atomic_write_bytes, fsync_path, remove_stale_temp
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.evaluation.decision import operating_targets
from blastscan.options import DeepOptions
from blastscan.pipelines.assemble import Tables
from blastscan.pipelines.grid import CompareData, SplitPlan
from blastscan.report.document import write_report
from blastscan.report.results import LEAKY_NOTE, SPLIT_KINDS, CompareResult


__all__ = ["INCOMPLETE_MARK", "MANIFEST_NAME", "check_replaceable", "default_run_dir", "run_dir_lock", "run_record",
           "used_manifest", "write_outputs"]

MANIFEST_NAME = "manifest.parquet"
#: Present in a run folder until it is complete (only ever seen in a temporary folder); export refuses it.
INCOMPLETE_MARK = "INCOMPLETE"


def _tmp_prefix(run_dir: Path) -> str:
    return f".{run_dir.name}."


def check_replaceable(run_dir: Path) -> None:
    """Refuse (one line) an existing ``--out`` that is neither empty nor a run folder: only a run is replaced."""
    if run_dir.is_dir() and not (run_dir / "run.json").is_file() and any(run_dir.iterdir()):
        raise BlastscanError(f"--out {run_dir}", "exists and is not a compare run folder (no run.json); a rerun "
                                                 "replaces a run folder whole, so give an empty or new folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise BlastscanError(f"--out {run_dir}", "exists and is not a folder")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (a ``.<name>.lock`` file beside it) for the block; a second holder
    fails at once with one line naming the folder. Also removes temp folders of killed runs."""
    run_dir = Path(os.path.abspath(run_dir))
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        fh = open(run_dir.parent / f".{run_dir.name}.lock", "a+")
    except OSError as exc:
        raise WriteError.of(run_dir, exc) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlastscanError(f"--out {run_dir}", "another compare is writing this run folder now; wait for it "
                                                     "to finish or give another --out") from None
        try:
            remove_stale_temp(run_dir.parent, _tmp_prefix(run_dir))
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_run_dir(base: str | os.PathLike = "blastscan-runs") -> Path:
    """``blastscan-runs/<local time stamp>`` (a suffix is added if that folder exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    i = 1
    while path.exists():
        path = Path(base) / f"{stamp}-{i}"
        i += 1
    return path


def used_manifest(manifest_df: pd.DataFrame, data: CompareData) -> pd.DataFrame:
    """The input manifest with a ``used`` column: the labelled rows the comparison evaluated."""
    out = manifest_df.copy()
    out["used"] = out["sha256"].isin(set(data.rows["sha256"])) & \
        out["label"].astype("string").str.lower().isin(["all", "hem"]).fillna(False)
    return out


def _data_record(manifest_df: pd.DataFrame, data: CompareData) -> dict[str, Any]:
    y, subjects, groups = data.y, data.subjects, data.groups
    n_all = int(y.sum())
    return {"n_images": int(len(data.rows)), "n_all": n_all, "n_hem": int(len(y) - n_all),
            "n_subjects": int(len(set(subjects))), "n_groups": int(len(set(groups))),
            "n_subjects_all": int(len(set(subjects[y == 1]))), "n_subjects_hem": int(len(set(subjects[y == 0]))),
            "n_unlabelled_ignored": data.n_unlabelled,
            "manifest_sha256": prov.manifest_hash(data.rows),
            "input_manifest_sha256": prov.manifest_hash(manifest_df)}


def _fold_records(data: CompareData, splits: SplitPlan) -> list[dict]:
    y, groups, subjects, plan = data.y, data.groups, data.subjects, splits.plan
    return [{"fold": i, "n_test": int(len(te)), "n_test_all": int(y[te].sum()),
             "n_test_hem": int(len(te) - y[te].sum()), "test_groups": sorted(set(groups[te])),
             "test_subjects": sorted(set(subjects[te])), "one_class": i in plan.one_class_folds}
            for i, (_, te) in enumerate(plan.folds)]


def run_record(manifest_df: pd.DataFrame, data: CompareData, splits: SplitPlan, tables: Tables,
               settings: EvalSettings, *, store, dataset, extractor_options: Mapping[str, Any] | None,
               classifiers: list[str], notes: list[str], skipped: list[dict], seconds: dict, started: str,
               jobs: int, run_dir: Path) -> dict[str, Any]:
    """The content of ``run.json``: what was run, on what, with which versions, and what came out."""
    plan, versions, records = splits.plan, prov.library_versions(), tables.config_records
    h = splits.holdout
    run = {
        "dataset": str(dataset) if dataset is not None else None,
        "manifest": MANIFEST_NAME,
        "store": str(store),
        "extractor_options": prov.to_jsonable(DeepOptions.from_mapping(extractor_options).record()),
        "seed": int(settings.seed),
        "n_splits": int(plan.n_splits),
        "n_splits_requested": int(settings.folds),
        "inner_splits": int(settings.inner_folds),
        "threshold_inner_cv": (f"{plan.n_splits - 1}-fold, over the other outer folds" if splits.inner.mode == "pairs"
                               else f"{settings.inner_folds}-fold, inside each training part"),
        "threshold_inner_mode": splits.inner.mode,
        "operating_targets": list(operating_targets(settings.target_recall)),
        "calibration": "platt_logit: per outer fold, fitted on its training part's inner out-of-fold P(ALL)",
        "fits_per_config": len(splits.tasks),
        "leaky_splits": int(len(splits.leaky)),
        "n_boot": int(settings.n_boot),
        "threshold": settings.threshold_record(),
        "configs": [{"name": r["name"], "feature_set": r["feature_set"], "classifier": r["classifier"],
                     "params": prov.to_jsonable(r["params"]), "tune": bool(r.get("tune"))} for r in records],
        "best": tables.best,
        "feature_sets": {fs: {"extractors": prov.to_jsonable(fm.extractors), "n_features": int(fm.X.shape[1]),
                              "n_dropped": int(len(fm.dropped))} for fs, fm in data.matrices.items()},
        "classifiers": classifiers,
        "data": _data_record(manifest_df, data),
        "folds": _fold_records(data, splits),
        "official_phase": None if h is None else {
            "n_train": int(len(h.train)), "n_test": int(len(h.test)),
            "test_subjects": sorted(set(data.subjects[h.test]))},
        "results": prov.to_jsonable(records),
        "skipped": skipped,
        "notes": notes,
        "versions": versions,
        "blastscan_version": versions.get("blastscan"),
        "git_revision": prov.git_revision(),
        "started": started,
        "finished": prov.timestamp(),
        "seconds": seconds,
        "jobs": jobs,
    }
    run["config_sha256"] = prov.config_hash({k: run[k] for k in ("extractor_options", "seed", "n_splits_requested",
                                                                  "inner_splits", "leaky_splits", "threshold",
                                                                  "configs")})
    return run


def _write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def write_outputs(result: CompareResult, manifest: pd.DataFrame) -> None:
    """Write the run folder whole: manifest, tables, metrics.json, the report and run.json into a temporary
    folder, renamed onto ``result.run_dir`` when complete (an old run folder there is replaced whole)."""
    final = Path(result.run_dir)
    check_replaceable(final)
    d = final.parent / f"{_tmp_prefix(final)}{os.getpid()}.tmp"
    try:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / INCOMPLETE_MARK).write_text("this run folder was not finished; run compare again\n")
    except OSError as exc:
        raise WriteError.of(d, exc) from None
    result.run_dir = d  # the report and every table are written into the temporary folder
    try:
        _write_files(result, manifest, d)
        _publish(d, final)
    except WriteError as exc:  # name the run folder the user gave, not the temporary one
        shutil.rmtree(d, ignore_errors=True)
        failed = Path(exc.what).name if Path(exc.what).parent == d else exc.what
        raise WriteError(f"--out {final}", f"{failed}: {exc.why}") from None
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        result.run_dir = final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` onto ``final``, replacing an old run folder whole."""
    old = final.parent / f"{_tmp_prefix(final)}{os.getpid()}.old.tmp"
    try:
        (tmp / INCOMPLETE_MARK).unlink()
        fsync_path(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except OSError as exc:
        raise WriteError.of(final, exc) from None
    shutil.rmtree(old, ignore_errors=True)


def _write_files(result: CompareResult, manifest: pd.DataFrame, d: Path) -> None:
    _write_table(manifest, d / MANIFEST_NAME)
    _write_table(result.metrics, d / "metrics.csv")
    _write_table(result.predictions, d / "predictions.csv")
    _write_table(result.per_subject, d / "per_subject.csv")
    if result.screening:
        frames = [t.assign(feature_set=fs) for fs, t in result.screening.items()]
        _write_table(pd.concat(frames, ignore_index=True), d / "screening.csv")
    records = prov.to_jsonable(result.metrics.to_dict(orient="records"))
    meta = {"best": result.best, "threshold": result.run["threshold"], "leaky_note": LEAKY_NOTE,
            "split_kinds": SPLIT_KINDS, "metrics": records}
    atomic_write_bytes(d / "metrics.json", json.dumps(meta, indent=1, allow_nan=False).encode())
    write_report(result)
    atomic_write_bytes(d / "run.json", json.dumps(prov.to_jsonable(result.run), indent=2, allow_nan=False).encode())
