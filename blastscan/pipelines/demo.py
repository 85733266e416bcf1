"""The whole loop on the bundled sample: check data, extract features, compare, export, score.

This is what the README's first command runs. Deep features are used when ImageNet weights can be
found (``--weights-dir``, ``$BLASTSCAN_WEIGHTS_DIR`` or the Keras cache/download); otherwise the demo
says why they were skipped and carries on with the handcrafted set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

from blastscan.errors import BlastscanError

__all__ = ["default_sample", "run_demo"]

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
    weights_dir: str | None = None,
    classifiers: Sequence[str] | None = None,
    jobs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run data check, extraction, comparison, export and scoring on the sample; return the paths.

    ``classifiers`` defaults to every registered classifier.
    """
    from blastscan.dataset import build_manifest, inspect_cache, summarize
    from blastscan.evaluation import EvalSettings
    from blastscan.features.featureset import FeatureSet
    from blastscan.pipelines.compare import compare, default_classifiers, default_ensembles
    from blastscan.pipelines.export import export_run
    from blastscan.pipelines.score import score
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    data = Path(data) if data else default_sample()
    options = {"weights_dir": weights_dir}

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

    echo("\n== 5/5 score the sample's held-out test-phase cells (new to the bundle) with it")
    targets = _score_inputs(data)
    predictions = out / "predictions.csv"
    scored = score(bundle_path, targets, predictions, store=store, extractor_options=options, progress=progress)
    echo(scored.summary())

    echo(f"\ndone in {time.perf_counter() - t0:.0f} s. Open {run_dir / 'report.html'} (or report.md) for the comparison.")
    return {"run_dir": run_dir, "bundle": bundle_path, "predictions": predictions, "store": store}


def _score_inputs(data: Path) -> list[str]:
    """Score the preliminary-phase folder when the sample has one, else the whole sample."""
    prelim = sorted(data.rglob("C-NMC_test_prelim_phase_data"))
    prelim = [p for p in prelim if p.is_dir()]
    return [str(prelim[0])] if prelim else [str(data)]


def _tensorflow_missing(ext) -> str | None:
    """Why the deep extractor ``ext`` cannot run here: TensorFlow absent and its ONNX graph not cached yet."""
    import importlib.util

    from blastscan.features.onnx_engine import cache_path

    if importlib.util.find_spec("tensorflow") is not None or ext.weights_sha256 is None:
        return None
    if cache_path(ext.name, ext.input_size, ext.weights_sha256).is_file():
        return None
    return "TensorFlow is not installed (pip install 'blastscan[tensorflow]'); it writes the backbone's graph once"
