"""The whole loop on the bundled sample: check data, extract features, compare, export, score.

This is what the README's first command runs. Deep features are used when ImageNet weights can be
found (``--weights-dir``, ``$BLASTSCAN_WEIGHTS_DIR`` or the Keras cache/download); otherwise the demo
says why they were skipped and carries on with the handcrafted set.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from blastscan.dataset import build_manifest, inspect_cache, natural_key, summarize
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.features.featureset import FeatureSet
from blastscan.features.engines.graph_cache import cache_path
from blastscan.options import DeepOptions
from blastscan.pipelines.compare import compare, default_classifiers, default_ensembles
from blastscan.pipelines.export import export_run
from blastscan.pipelines.score import score

__all__ = ["default_sample", "run_demo", "check_against_labels", "format_check"]

DEEP = ("inception_v3", "vgg16")


def default_sample() -> Path:
    """The real C-NMC sample shipped inside the package (``blastscan/sample``, package data)."""
    here = Path(__file__).resolve().parents[1] / "sample"
    if not (here / "C-NMC_Leukemia").is_dir():
        raise BlastscanError(str(here), "the bundled sample is missing from this installation "
                                        "(reinstall blastscan from a full wheel or clone, or pass --data)")
    return here


def run_demo(
    out_dir: str | os.PathLike = "demo-output",
    *,
    data: str | os.PathLike | None = None,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    classifiers: Sequence[str] | None = None,
    jobs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run data check, extraction, comparison, export and scoring on the sample; return the paths.

    ``extractor_options`` are the deep backbones' (:class:`~blastscan.options.DeepOptions`: where the
    weights are, precision, engine, batch size); ``classifiers`` defaults to every registered classifier.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    data = Path(data) if data else default_sample()
    options = DeepOptions.from_mapping(extractor_options)

    echo(f"== 1/5 dataset: {data}")
    manifest = build_manifest(data, jobs=jobs, progress=progress, cache=inspect_cache(store))
    echo(summarize(manifest))

    extractors = ["size", "handcrafted"]
    skipped: dict[str, str] = {}
    for name in DEEP:
        try:
            fs = FeatureSet(name, options)  # builds the extractor: finds (and hashes) its weights
            why = _tensorflow_missing(fs.extractors[0])
            if why:
                raise BlastscanError(name, why)
            extractors.append(name)
        except BlastscanError as exc:
            skipped[name] = exc.why or str(exc)
    echo(f"\n== 2/5 extract: {', '.join(extractors)}")
    for name, why in skipped.items():
        echo(f"skipped {name}: {why}")
    summary = FeatureSet.union(extractors, options).ensure(manifest.df, store, jobs=jobs, progress=progress)
    echo(summary.format())

    feature_sets = ["size", "handcrafted"] + [n for n in DEEP if n in extractors]
    classifiers = list(classifiers or default_classifiers())
    votes = default_ensembles(feature_sets)
    echo(f"\n== 3/5 compare: {', '.join(feature_sets)} x {', '.join(classifiers)}"
         + (f" and the votes {'; '.join(votes)}" if votes else "") + " (subject-disjoint CV)")
    run_dir = out / "run"
    # the preliminary-phase cells are scored in step 5: kept out of the comparison and the bundle, they are
    # new cells to the model, as scoring should show
    held_out = manifest.df["source_split"].astype(str).isin(["prelim", "final"]).to_numpy()
    seen = manifest.df[~held_out] if held_out.any() and (~held_out).any() else manifest.df
    if len(seen) < len(manifest.df):
        echo(f"{int(held_out.sum())} test-phase cells are kept out of the comparison and the bundle: "
             "step 5 scores them as new cells")
    result = compare(seen, feature_sets, classifiers, store, run_dir, settings=EvalSettings(seed=seed),
                     ensembles=votes,
                     extractor_options=options, progress=progress, dataset=str(data), jobs=jobs)
    echo(result.summary())

    echo(f"\n== 4/5 export the best configuration ({result.best}) as a bundle")
    bundle_path = out / "model.joblib"
    export_run(run_dir, result.best, bundle_path, progress=progress)
    echo(f"bundle: {bundle_path} (+ {bundle_path.with_suffix('.json').name})")

    # the manifest rows are scored (not the folder), so each cell keeps the subject and label that the
    # dataset's labels CSV gives it
    targets = manifest.df[held_out] if held_out.any() and (~held_out).any() else manifest.df
    what = "held-out test-phase cells" if len(targets) < len(manifest.df) else "cells (no held-out cells in this data)"
    echo(f"\n== 5/5 score the sample's {what} with it")
    predictions = out / "predictions.csv"
    scored = score(bundle_path, targets.reset_index(drop=True), predictions, store=store,
                   extractor_options=options, progress=progress)
    echo(scored.summary())

    check = check_against_labels(predictions, targets)
    echo(f"\ndone in {time.perf_counter() - t0:.0f} s. Open {run_dir / 'report.html'} (or report.md) for the comparison.")
    echo("\n" + format_check(check, held_out=len(targets) < len(manifest.df), labels_from=_labels_source(data)))
    return {"run_dir": run_dir, "bundle": bundle_path, "predictions": predictions, "store": store, "check": check}


def check_against_labels(predictions_csv: str | os.PathLike, labelled: pd.DataFrame) -> dict:
    """The calls of ``predictions_csv`` against the labels of the manifest rows ``labelled`` (matched by
    path): ``{"n", "right", "n_all", "right_all", "n_hem", "right_hem", "not_scored", "per_subject"}``,
    ``per_subject`` a DataFrame (``subject, label, n, right``)."""
    pred = pd.read_csv(predictions_csv, dtype={"subject": str, "pred": str, "status": str})
    truth = labelled[["path", "label", "subject"]].rename(columns={"subject": "subject_label"})
    df = truth.merge(pred[["path", "pred"]], on="path", how="left")
    df = df[df["label"].isin(["all", "hem"])]
    df["pred"] = df["pred"].fillna("")
    scored = df[df["pred"].isin(["all", "hem"])].assign(right=lambda d: d["pred"] == d["label"])
    per = (scored.groupby(["subject_label", "label"], sort=False)["right"].agg(n="size", right="sum")
           .reset_index().rename(columns={"subject_label": "subject"}))
    per = per.sort_values("subject", key=lambda s: s.map(natural_key)).reset_index(drop=True)
    out = {"n": len(scored), "right": int(scored["right"].sum()), "not_scored": int(len(df) - len(scored)),
           "per_subject": per}
    for c in ("all", "hem"):
        part = scored[scored["label"] == c]
        out[f"n_{c}"], out[f"right_{c}"] = len(part), int(part["right"].sum())
    return out


def format_check(check: dict, *, held_out: bool = True, labels_from: str = "the dataset's labels") -> str:
    """The demo's last lines: how many scored cells the bundle called right, per class and per subject."""
    what = "held-out cells" if held_out else "cells (training cells, seen by the model: not a test)"
    n, right = check["n"], check["right"]
    lines = [f"== the calls against {labels_from}"]
    per = check["per_subject"]
    if len(per):
        lines.append("per subject (class: right of scored): " + ", ".join(
            f"{r.subject} ({r.label.upper()}): {int(r.right)}/{int(r.n)}" for r in per.itertuples()))
    lines.append(f"ALL cells called ALL: {check['right_all']} of {check['n_all']}; HEM cells called HEM: "
                 f"{check['right_hem']} of {check['n_hem']}"
                 + (f"; {check['not_scored']} not scored" if check["not_scored"] else ""))
    share = f" ({right / n:.0%})" if n else ""
    lines.append(f"{what} called right: {right} of {n}{share}, wrong: {n - right}"
                 + (f", from {len(per)} subjects" if len(per) else "")
                 + ("; a handful of cells: this shows the loop, not the model's accuracy "
                    "(the report's subject-disjoint figures do)" if held_out else ""))
    return "\n".join(lines)


def _labels_source(data: Path) -> str:
    """Where the held-out cells' labels come from, for the demo's last lines."""
    csvs = sorted(p for p in data.rglob("*_labels.csv") if p.is_file())
    return f"the labels the sample ships ({csvs[0].relative_to(data)})" if csvs else "the dataset's labels"


def _tensorflow_missing(ext) -> str | None:
    """Why the deep extractor ``ext`` cannot run here: TensorFlow absent and its ONNX graph not cached yet."""
    if importlib.util.find_spec("tensorflow") is not None or ext.weights_sha256 is None:
        return None
    if cache_path(ext.name, ext.input_size, ext.weights_sha256).is_file():
        return None
    return "TensorFlow is not installed (pip install 'blastscan[tensorflow]'); it writes the backbone's graph once"
