"""The ``blastscan`` command line: thin wrappers that parse options and call ``blastscan.pipelines``.

Every command has a Python equivalent in ``blastscan.pipelines``. Expected failures raise
:class:`~blastscan.errors.BlastscanError` and are printed as one line, ``error: <what>: <why>``.
TensorFlow is imported only by the deep-feature code, so ``--help`` and the other commands start fast.
"""

from __future__ import annotations

import os
import sys

import click

from blastscan import __version__
from blastscan.errors import BlastscanError


class _Group(click.Group):
    """Turns BlastscanError into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BlastscanError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished chunks are kept in the store", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="blastscan")
def main():
    """Tell leukemic blasts (ALL) from normal cells (HEM) in C-NMC-style single-cell images.

    Typical use: `blastscan data DATASET` to check a dataset, `blastscan extract DATASET` to compute and
    cache features, `blastscan compare DATASET` for a subject-disjoint comparison report, then
    `blastscan train`/`export` and `blastscan score` to score new cells.
    """


def store_option(f):
    return click.option(
        "--store",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("BLASTSCAN_STORE", "blastscan-store"),
        show_default="blastscan-store or $BLASTSCAN_STORE",
        help="Feature store folder (cache of computed features, shared by all commands).",
    )(f)


def weights_option(f):
    f = click.option(
        "--random-weights",
        is_flag=True,
        help="Use untrained deep backbones (for tests only: their embeddings are meaningless).",
    )(f)
    return click.option(
        "--weights-dir",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("BLASTSCAN_WEIGHTS_DIR"),
        show_default="$BLASTSCAN_WEIGHTS_DIR, else the Keras download",
        help="Folder with ImageNet weight files for the deep backbones.",
    )(f)


def jobs_option(f):
    return click.option(
        "--jobs", "-j", type=int, default=None, show_default="all cores",
        help="Processes for per-image feature work.",
    )(f)


def dataset_manifest(dataset, store, jobs, quiet):
    """Build DATASET's manifest (file checks cached in the store) and list its problems briefly on stderr."""
    from pathlib import Path

    from blastscan.dataset import build_manifest, format_problems

    manifest = build_manifest(dataset, jobs=jobs, progress=not quiet, cache=Path(store) / "inspected.json")
    if manifest.problems:
        for line in format_problems(manifest.problems, 5, root=manifest.root):
            click.echo(line, err=True)
        click.echo("(`blastscan data DATASET --problems FILE` lists them all)", err=True)
    return manifest


def _deep_options(weights_dir, random_weights, **extra):
    opts = {"weights_dir": weights_dir, "random_weights": random_weights}
    opts.update({k: v for k, v in extra.items() if v is not None})
    return opts


# ---- data (dataset layer) -------------------------------------------------------------------
@main.command("data")
@click.argument("dataset", type=click.Path())
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the manifest here (.csv or .parquet): one row per image with path, sha256, label, "
                   "subject, group, source_split, width, height, dup_group.")
@click.option("--problems", "problems_file", type=click.Path(dir_okay=False), default=None,
              help="Write every problem here, one line each (the summary shows the first 20).")
@click.option("--jobs", "-j", type=int, default=None, show_default="all cores", help="Threads reading images.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def data(dataset, out, problems_file, jobs, quiet):
    """Check DATASET and summarise it: classes, subjects, splits, duplicates, problems.

    DATASET is a C-NMC 2019 folder (the top folder, C-NMC_Leukemia, or a folder above it), class folders
    (all/, hem/), a CSV with path,label[,subject] columns, or a folder of images. Every image is read
    and hashed; unreadable files and missing labels are listed, not fatal. Exits with 2 only when no
    usable image is found.
    """
    from blastscan.dataset import build_manifest, summarize, write_manifest
    from blastscan.features.store import atomic_write_bytes

    manifest = build_manifest(dataset, jobs=jobs, progress=not quiet)
    click.echo(summarize(manifest))
    if problems_file:
        text = "".join(f"{p}\n" for p in manifest.problems)
        try:
            atomic_write_bytes(problems_file, text.encode())
        except OSError as exc:
            raise BlastscanError(problems_file, f"cannot write ({exc.strerror or exc})") from None
        click.echo(f"all {len(manifest.problems):,} problems written to {problems_file}")
    elif len(manifest.problems) > 20:
        click.echo("(--problems FILE writes them all)")
    if out:
        write_manifest(manifest.df, out)
        click.echo(f"manifest: {out} ({len(manifest.df):,} rows)")


# ---- features (feature dictionary) -----------------------------------------------------------
# (filled in by the handcrafted-features work)


# ---- weights (deep backbones) ------------------------------------------------------------------
# (filled in by the deep-features work)


# ---- extract ---------------------------------------------------------------------------------
@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--features", "-f", default="handcrafted", show_default=True,
              help="Comma-separated feature sets: handcrafted, inception_v3, vgg16, or unions like "
                   "handcrafted+inception_v3. `blastscan features` lists the handcrafted ones.")
@store_option
@jobs_option
@weights_option
@click.option("--input-size", type=int, default=None, help="Deep backbones' input size (default: each backbone's own).")
@click.option("--batch-size", type=int, default=None, help="Images per forward pass for deep backbones.")
@click.option("--retry-failed", is_flag=True, help="Try again the images that failed in an earlier run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def extract(dataset, features, store, jobs, weights_dir, random_weights, input_size, batch_size, retry_failed, quiet):
    """Compute features for DATASET and cache them in the feature store.

    Only images missing from the store are computed; a second run over the same data reuses
    everything. An interrupted run keeps every finished chunk. Images that cannot be featurised are
    listed with the reason and do not stop the run.
    """
    from blastscan.pipelines.extract import extract as run_extract

    manifest = dataset_manifest(dataset, store, jobs, quiet)
    opts = _deep_options(weights_dir, random_weights, input_size=input_size, batch_size=batch_size)
    summary = run_extract(manifest.df, features.split(","), store, jobs=jobs, extractor_options=opts,
                          progress=not quiet, retry_failed=retry_failed)
    click.echo(f"{len(manifest.df)} images in {dataset} ({manifest.layout} layout)")
    click.echo(summary.format())


# ---- compare / train (classifiers, evaluation, report) ----------------------------------------
@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--features", "-f", default="handcrafted", show_default=True,
              help="Comma-separated feature sets to compare (computed beforehand by `blastscan extract`), e.g. "
                   "handcrafted,inception_v3,vgg16,handcrafted+inception_v3.")
@click.option("--classifiers", "-c", default="logreg,svm,xgboost,fcn,fcn_svm", show_default=True,
              help="Comma-separated classifiers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              show_default="blastscan-runs/<timestamp>", help="Run folder for the report, metrics and predictions.")
@store_option
@weights_option
@click.option("--input-size", type=int, default=None, help="Deep backbones' input size, as given to extract.")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Subject-disjoint folds (fewer when a class has fewer subject groups; the report says so).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of folds, models and bootstrap.")
@click.option("--threshold", "threshold_rule", type=click.Choice(["recall", "f1"]), default="recall",
              show_default=True, help="Threshold rule, applied on training folds only: reach --target-recall "
                                      "for ALL, or best weighted F1.")
@click.option("--target-recall", type=float, default=0.90, show_default=True, help="ALL recall for --threshold recall.")
@click.option("--param", "params", multiple=True, metavar="CLF.NAME=VALUE",
              help="Classifier parameter, e.g. --param svm.C=10 (repeatable).")
@click.option("--inner-folds", type=int, default=3, show_default=True,
              help="Folds of the inner subject-disjoint CV that picks each training part's threshold.")
@click.option("--leaky-folds", type=int, default=3, show_default=True,
              help="Folds of the per-image (leaky) split shown for comparison; 0 skips it.")
@click.option("--bootstrap", "n_boot", type=int, default=1000, show_default=True,
              help="Resamples of subjects for the 95% intervals.")
@click.option("--jobs", "-j", type=int, default=None, show_default="all cores", help="Models fitted in parallel.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def compare(dataset, features, classifiers, out_dir, store, weights_dir, random_weights, input_size, folds, seed,
            threshold_rule, target_recall, params, inner_folds, leaky_folds, n_boot, jobs, quiet):
    """Compare feature sets x classifiers on DATASET with subject-disjoint evaluation.

    Writes a run folder with report.html / report.md, metrics.csv/json, out-of-fold predictions,
    per-subject accuracy, the manifest used and run.json. Every headline number comes from splits that
    keep each subject on one side; a per-image split is shown only as a labelled (leaky) warning.
    """
    from blastscan.pipelines.compare import compare as run_compare, parse_params

    parsed = parse_params(params)  # bad --param fails before the manifest is built
    manifest = dataset_manifest(dataset, store, jobs, quiet)
    opts = _deep_options(weights_dir, random_weights, input_size=input_size)
    result = run_compare(manifest.df, features, classifiers, store, out_dir, extractor_options=opts, n_splits=folds,
                         seed=seed, threshold_rule=threshold_rule, target_recall=target_recall, params=parsed,
                         progress=not quiet, dataset=dataset, jobs=jobs, inner_splits=inner_folds,
                         leaky_splits=leaky_folds, n_boot=n_boot)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.summary())



# ---- export / score (bundle) -----------------------------------------------------------------
# (filled in by the bundle work)


# ---- demo ------------------------------------------------------------------------------------
@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the store, the comparison report, the bundle and the predictions.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Dataset to use instead of the bundled sample (data/sample).")
@click.option("--classifiers", default="logreg,svm,xgboost,fcn,fcn_svm", show_default=True,
              help="Comma-separated classifiers to compare.")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              default=lambda: os.environ.get("BLASTSCAN_WEIGHTS_DIR"),
              show_default="$BLASTSCAN_WEIGHTS_DIR, else the Keras cache/download",
              help="Folder with ImageNet weights; without weights the deep features are skipped.")
@jobs_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo(out_dir, data, classifiers, weights_dir, jobs, seed, quiet):
    """Run the whole loop on the bundled real sample: data, extract, compare, export, score."""
    from blastscan.pipelines.demo import run_demo

    run_demo(out_dir, data=data, weights_dir=weights_dir, jobs=jobs, seed=seed, progress=not quiet,
             classifiers=tuple(c for c in classifiers.split(",") if c), echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
