"""The ``blastscan`` command line: thin wrappers that parse options into typed objects (a
:class:`~blastscan.features.featureset.FeatureSetSpec`, :class:`~blastscan.options.DeepOptions`,
:class:`~blastscan.evaluation.EvalSettings`), call one function of ``blastscan.pipelines`` and print.

Every command has a Python equivalent in ``blastscan.pipelines``. Expected failures raise
:class:`~blastscan.errors.BlastscanError` and are printed as one line, ``error: <what>: <why>``.
TensorFlow, OpenVINO and Dask are imported only where a command uses them (the deep-feature code, the
FCN classifiers, ``--scheduler``), so ``--help`` and the other commands never pay for them.
"""

from __future__ import annotations

import csv
import sys

import click

from blastscan import __version__
from blastscan._io import atomic_write_bytes, is_write_failure
from blastscan.bundle.data_only import is_data_only
from blastscan.cli_options import (TRUST_HELP, bundle_weights_option, dataset_manifest, deep_option_group, deep_options,
                                   jobs_option, joblib_note, max_pixels_option, no_embed_option, params_option,
                                   per_image_split_option, scheduler_option, store_option, subject_pattern_option,
                                   weights_option, yes_option)
from blastscan._io import check_writable_file, sigterm_as_interrupt
from blastscan.dataset import build_manifest, inspect_cache, summarize, write_manifest
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.evaluation.decision import OPERATING_TARGETS
from blastscan.evaluation.settings import RULES
from blastscan.features.featureset import FeatureSetSpec
from blastscan.features.handcrafted import feature_dictionary
from blastscan.features.store import FeatureStore
from blastscan.options import load_params, params_for, split_list
from blastscan.parallel import session
from blastscan.pipelines.compare import compare as run_compare
from blastscan.pipelines.compare import default_classifiers, default_ensembles, default_feature_sets
from blastscan.pipelines.demo import run_demo
from blastscan.pipelines.export import export_run
from blastscan.pipelines.extract import extract as run_extract
from blastscan.pipelines.score import score as run_score
from blastscan.pipelines.train import train as run_train
from blastscan.pipelines.weights import weights_status
from blastscan.report.masks import masks_sheet, with_scores
from blastscan.report.table import write_feature_table
from blastscan.view.server import serve


class _Group(click.Group):
    """Turns BlastscanError into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        sigterm_as_interrupt()
        try:
            return super().invoke(ctx)
        except BlastscanError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except PermissionError as exc:  # a place nobody checked before: still one line, naming it
            click.echo(f"error: {exc.filename or 'file'}: cannot write or read there ({exc.strerror})", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk or an I/O error outside an atomic write: one line, naming the path
            if not is_write_failure(exc):
                raise
            where = exc.filename or "a file"
            click.echo(f"error: {where}: {exc.strerror or str(exc).splitlines()[0]}", err=True)
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


# ---- data (dataset layer) -------------------------------------------------------------------
@main.command("data")
@click.argument("dataset", type=click.Path())
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the manifest here (.csv or .parquet): one row per image with path, sha256, label, "
                   "subject, group, source_split, width, height, dup_group.")
@click.option("--problems", "problems_file", type=click.Path(dir_okay=False), default=None,
              help="Write every problem here, one line each (the summary shows the first 20).")
@click.option("--jobs", "-j", type=int, default=None, show_default="all cores", help="Threads reading images.")
@subject_pattern_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def data(dataset, out, problems_file, jobs, subject_pattern, quiet):
    """Check DATASET and summarise it: classes, subjects, splits, duplicates, problems.

    DATASET is a C-NMC 2019 folder (the top folder, C-NMC_Leukemia, or a folder above it), class folders
    (all/, hem/), a CSV with path,label[,subject] columns, or a folder of images. Every image is read
    and hashed; unreadable files and missing labels are listed, not fatal. Exits with 2 only when no
    usable image is found.
    """
    manifest = build_manifest(dataset, jobs=jobs, progress=not quiet, subject_pattern=subject_pattern)
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
@main.command("features")
@click.option("--family", default=None,
              help="Only this family: shape, color, texture, chromatin, color_absolute, quality, or handcrafted "
                   "(the union of shape, color, texture and chromatin).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def features_cmd(family, fmt):
    """List the handcrafted features: name, family, region, unit and definition (formula), in column order."""


    infos = feature_dictionary(family)
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["name", "family", "region", "unit", "definition"])
        writer.writerows([i.name, i.family, i.region, i.unit, i.definition] for i in infos)
        return
    width = max(len(i.name) for i in infos)
    fam_w = max(len(i.family) for i in infos)
    reg_w = max(len(i.region) for i in infos)
    for i in infos:
        click.echo(f"{i.name:<{width}}  {i.family:<{fam_w}}  {i.region or '-':<{reg_w}}  {i.unit or '-':<9}  "
                   f"{i.definition}")
    click.echo(f"{len(infos)} features", err=True)


# ---- weights (deep backbones) ------------------------------------------------------------------
@main.command("weights")
@weights_option
@click.option("--download", is_flag=True,
              help="Download Keras' ImageNet weights of each missing backbone (needs internet) into --weights-dir, "
                   "else the Keras cache.")
def weights(weights_dir, random_weights, download):
    """Show, per deep backbone, which weight file would be used, where, and its sha256.

    Looks where `blastscan extract` looks: --weights-dir ($BLASTSCAN_WEIGHTS_DIR) when given, else the
    Keras cache. For a missing file it says what was looked for and how to provide it. Exits with 1 when
    a backbone has no weights.
    """
    if random_weights:
        raise BlastscanError("--random-weights", "does not apply to `blastscan weights`")
    status = weights_status(weights_dir, download=download)
    for st in status:
        click.echo(st.line())
    if any(st.path is None for st in status):
        sys.exit(1)


# ---- extract ---------------------------------------------------------------------------------
@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--features", "-f", default="handcrafted", show_default=True,
              help="Comma-separated feature sets: handcrafted, inception_v3, vgg16, or unions like "
                   "handcrafted+inception_v3. `blastscan features` lists the handcrafted ones. A backbone takes "
                   "options in its name: inception_v3_grey (greyscale input), _od (haematoxylin density), _tta8 "
                   "(embedding averaged over 8 rotations/mirrors), _tta4 (4 rotations), e.g. inception_v3_grey_tta8.")
@store_option
@jobs_option
@deep_option_group()
@click.option("--input-size", type=int, default=None, help="Deep backbones' input size (default: each backbone's own).")
@click.option("--retry-failed", is_flag=True, help="Try again the images that failed in an earlier run.")
@click.option("--repair", is_flag=True, help="First delete the store's damaged parts (checksum, columns or values "
                                             "wrong); their rows are computed again.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-cell feature table here (.parquet or .csv): path, sha256, subject, label, "
                   "split, status and every feature of the chosen sets.")
@scheduler_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def extract(dataset, features, store, jobs, weights_dir, random_weights, input_size, batch_size, precision, engine,
            retry_failed, repair, out, scheduler, quiet):
    """Compute features for DATASET and cache them in the feature store.

    Only images missing from the store are computed; a second run over the same data reuses
    everything. An interrupted run keeps every finished chunk. Images that cannot be featurised are
    listed with the reason and do not stop the run.
    """
    if repair:
        for path, why in FeatureStore(store).repair():
            click.echo(f"repair: deleted {path} ({why})", err=True)
    specs = FeatureSetSpec.parse_list(features)  # a misspelt set fails before the images are read
    opts = deep_options(weights_dir, random_weights, input_size, batch_size, precision, engine)
    manifest = dataset_manifest(dataset, store, jobs, quiet)
    with session(scheduler):
        summary = run_extract(manifest.df, specs, store, jobs=jobs, extractor_options=opts,
                              progress=not quiet, retry_failed=retry_failed)
    click.echo(f"{len(manifest.df)} images in {dataset} ({manifest.layout} layout)")
    click.echo(summary.format())
    if out:
        table = write_feature_table(manifest.df, specs, store, out, extractor_options=opts)
        click.echo(f"feature table: {out} ({len(table):,} cells x {table.shape[1]} columns)")


# ---- masks (segmentation contact sheets) -------------------------------------------------------
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--n", "n", type=int, default=48, show_default=True, help="Cells on the sheet (both classes alike).")
@click.option("--subjects", default=None, help="Comma-separated subjects to show only, e.g. 11,H10.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the choice of cells.")
@click.option("--columns", type=int, default=8, show_default=True, help="Tiles per row.")
@click.option("--tile", type=click.IntRange(48, 600), default=150, show_default=True, help="Tile size in pixels.")
@store_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def masks(inputs, out, n, subjects, seed, columns, tile, store, quiet):
    """Draw a contact sheet of cells with their cell and nucleus outlines.

    INPUTS is a dataset (as for `blastscan data`), or images, folders and CSVs with a path column (e.g.
    the predictions.csv of `blastscan score`, whose tiles then show each cell's call and P(ALL)). Cells are
    picked across classes (or calls) and subjects; outlines: cell yellow, nucleus cyan, as in `blastscan
    view`; a cell whose mask quality is flagged is shown in red. Look at the masks before trusting the
    features.
    """
    source = inputs[0] if len(inputs) == 1 else list(inputs)
    manifest = build_manifest(source, progress=not quiet, cache=inspect_cache(store))
    chosen = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
    result = masks_sheet(with_scores(manifest.df, inputs), out, n=n, subjects=chosen, seed=seed, columns=columns,
                         tile=tile)
    click.echo(result.summary())


# ---- compare / train (classifiers, evaluation, report) ----------------------------------------
@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--features", "-f", default=None,
              show_default="size,handcrafted,inception_v3,vgg16, the deep sets only where their weights are found",
              help="Comma-separated feature sets to compare, e.g. size,handcrafted,inception_v3,vgg16 or unions "
                   "like handcrafted+inception_v3, or backbone options such as inception_v3_grey_tta8 (see extract "
                   "--help); features the store lacks are computed first.")
@click.option("--classifiers", "-c", default=None, show_default="the registry's defaults",
              help="Comma-separated classifiers.")
@click.option("--ensemble", "-e", "ensembles", multiple=True, metavar="SET/CLF+SET/CLF...",
              help="A soft vote to rank beside the single models (repeatable), e.g. "
                   "inception_v3/svm_pca+size/logreg: P(ALL) is the mean of its members', each fitted on its own "
                   "feature set. Default: the votes of DEFAULT_ENSEMBLES when every member's feature set is "
                   "compared; 'none' for no vote.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              show_default="blastscan-runs/<timestamp>", help="Run folder for the report, metrics and predictions.")
@store_option
@deep_option_group()
@click.option("--input-size", type=int, default=None, help="Deep backbones' input size, as given to extract.")
@click.option("--folds", type=int, default=EvalSettings.folds, show_default=True,
              help="Subject-disjoint folds (fewer when a class has fewer subject groups; the report says so).")
@click.option("--seed", type=int, default=EvalSettings.seed, show_default=True, help="Seed of folds, models and bootstrap.")
@click.option("--threshold", "threshold_rule", type=click.Choice(list(RULES)), default=EvalSettings.threshold_rule,
              show_default=True, help="Threshold rule, applied on training folds only: reach --target-recall "
                                      "for ALL, or best weighted F1.")
@click.option("--target-recall", type=float, default=EvalSettings.target_recall, show_default=True,
              help="ALL recall for --threshold recall.")
@params_option
@click.option("--inner-folds", type=int, default=EvalSettings.inner_folds, show_default=True,
              help="Folds of the inner subject-disjoint CV that picks each training part's threshold.")
@click.option("--leaky-folds", type=int, default=EvalSettings.leaky_folds, show_default=True,
              help="Folds of the per-image (leaky) split shown for comparison; 0 skips it.")
@click.option("--bootstrap", "n_boot", type=int, default=EvalSettings.n_boot, show_default=True,
              help="Resamples of subjects for the 95% intervals.")
@click.option("--jobs", "-j", type=int, default=None, show_default="all cores", help="Models fitted in parallel.")
@subject_pattern_option
@per_image_split_option
@click.option("--tune", is_flag=True,
              help="Search each classifier's small grid inside every training part on subject-grouped inner folds "
                   "(the chosen values are recorded per fold); votes are not built then.")
@scheduler_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def compare(dataset, features, classifiers, ensembles, out_dir, store, weights_dir, random_weights, input_size, precision,
            engine, batch_size, folds, seed, threshold_rule, target_recall, params, params_file, inner_folds, leaky_folds, n_boot, jobs,
            subject_pattern, per_image_split, tune, scheduler, quiet):
    """Compare feature sets x classifiers on DATASET with subject-disjoint evaluation.

    Writes a run folder with report.html / report.md, metrics.csv/json, out-of-fold predictions,
    per-subject accuracy, the manifest used and run.json. Every headline number comes from splits that
    keep each subject on one side; a per-image split is shown only as a labelled (leaky) warning.
    """
    parsed = load_params(params, params_file)  # bad --param fails before the manifest is built
    settings = EvalSettings(folds=folds, seed=seed, threshold_rule=threshold_rule, target_recall=target_recall,
                            inner_folds=inner_folds, leaky_folds=leaky_folds, n_boot=n_boot,
                            per_image_split=per_image_split)
    opts = deep_options(weights_dir, random_weights, input_size, batch_size, precision, engine)
    left_out = []
    if features is None:
        features, left_out = default_feature_sets(opts)
    specs = FeatureSetSpec.parse_list(features)
    manifest = dataset_manifest(dataset, store, jobs, quiet, subject_pattern)
    votes = default_ensembles(specs) if not ensembles else [e for e in ensembles if e.lower() != "none"]
    with session(scheduler):
        result = run_compare(manifest.df, specs, classifiers or default_classifiers(), store, out_dir,
                             settings=settings, params=parsed, ensembles=votes, tune=tune, extractor_options=opts,
                             jobs=jobs, progress=not quiet, dataset=dataset, feature_set_notes=left_out)
    for summary in result.extracted:
        if any(r.computed for r in summary.runs):
            click.echo(summary.format(max_failures=5), err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.summary())


# ---- export / score (bundle) -----------------------------------------------------------------

@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--features", "-f", default="handcrafted", show_default=True,
              help="One feature set, e.g. handcrafted, inception_v3 or handcrafted+inception_v3.")
@click.option("--classifier", "-c", default="svm", show_default=True, help="One classifier, e.g. logreg, svm, xgboost.")
@params_option
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the bundle here: model.bsb, the data-only bundle to share (JSON + ONNX, no code), or "
                   "model.joblib (a pickle, with a .json sidecar beside it).")
@no_embed_option
@store_option
@jobs_option
@deep_option_group()
@click.option("--input-size", type=int, default=None, help="Deep backbones' input size (default: each backbone's own).")
@click.option("--threshold", "threshold_rule", type=click.Choice(list(RULES)), default=EvalSettings.threshold_rule,
              show_default=True, help="Threshold rule, applied to subject-disjoint out-of-fold P(ALL) of the "
                                      "training data: reach --target-recall for ALL, or best weighted F1.")
@click.option("--target-recall", type=float, default=EvalSettings.target_recall, show_default=True,
              help="ALL recall for --threshold recall.")
@click.option("--folds", type=int, default=EvalSettings.folds, show_default=True,
              help="Outer subject-disjoint folds that measure the shipped threshold procedure on held-out subjects "
                   "(the operating point the bundle reports, as compare measures it).")
@click.option("--inner-folds", type=int, default=EvalSettings.inner_folds, show_default=True,
              help="Folds of the inner CV where compare's scheme over the other outer folds is not possible (as "
                   "compare's --inner-folds).")
@click.option("--bootstrap", "n_boot", type=int, default=EvalSettings.n_boot, show_default=True,
              help="Resamples of subjects for the operating point's 95% intervals.")
@click.option("--seed", type=int, default=EvalSettings.seed, show_default=True, help="Seed of folds and model.")
@subject_pattern_option
@per_image_split_option
@click.option("--tune", is_flag=True,
              help="Search the classifier's small grid on subject-grouped inner folds of the training data; the "
                   "chosen values are recorded in the bundle.")
@scheduler_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train(dataset, features, classifier, params, params_file, out, no_embed, store, jobs, weights_dir, random_weights,
          input_size, precision, engine, batch_size, threshold_rule, target_recall, folds, inner_folds, n_boot, seed,
          subject_pattern, per_image_split, tune, scheduler, quiet):
    """Fit one model on every labelled image of DATASET; with --out, save it as a scoring bundle.

    Missing features are computed first. The calibration of P(ALL) and the threshold come from the procedure
    compare measures per outer fold (an inner subject-disjoint CV, its out-of-fold P(ALL), the threshold rule),
    run over all subjects; the printed recall and specificity are that procedure's result on held-out subjects
    of an outer subject-disjoint CV (--folds), with subject-bootstrap intervals.
    """
    settings = EvalSettings(seed=seed, threshold_rule=threshold_rule, target_recall=target_recall, folds=folds,
                            inner_folds=inner_folds, n_boot=n_boot, per_image_split=per_image_split)
    spec = FeatureSetSpec.parse(features)
    opts = deep_options(weights_dir, random_weights, input_size, batch_size, precision, engine)
    params_for(classifier, params, params_file)  # a bad --param or --out fails before the manifest is built
    if out is not None:
        check_writable_file(out, "--out")
    manifest = dataset_manifest(dataset, store, jobs, quiet, subject_pattern)
    with session(scheduler):
        run_train(manifest.df, spec, classifier, store, params=params, params_file=params_file, out=out,
                  extractor_options=opts, settings=settings, jobs=jobs, progress=not quiet, echo=click.echo,
                  tune=tune, embed=not no_embed, dataset=dataset)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--config", "config_name", required=True, metavar="NAME",
              help="Configuration of the run to export, e.g. handcrafted/svm (see the run's report).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Bundle file to write: model.bsb (data-only: JSON + ONNX, no code; for sharing) or "
                   "model.joblib (a pickle, with a .json sidecar beside it).")
@no_embed_option
@click.option("--store", type=click.Path(file_okay=False), default=None, show_default="the run's store",
              help="Feature store, if it moved since the run.")
@bundle_weights_option
@yes_option
@click.option("--target-recall", type=float, default=None, show_default="the run's",
              help="The operating point to ship, among those the run measured ("
                   + ", ".join(f"{t:.2f}" for t in OPERATING_TARGETS)
                   + " and its own --target-recall); for runs with --threshold recall.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def export(run_dir, config_name, out, no_embed, store, weights_dir, target_recall, quiet):
    """Refit configuration NAME of a `blastscan compare` run on all its labelled images and save a bundle.

    Uses the run's parameters, feature store, extractor options, seed and threshold rule; the calibration
    and threshold come from the procedure the run measured per outer fold, and the bundle reports the run's
    outer-fold recall and specificity of it.
    """
    opts = deep_options(weights_dir)
    bundle = export_run(run_dir, config_name, out, store=store, extractor_options=opts, target_recall=target_recall,
                        progress=not quiet, embed=not no_embed)
    click.echo(bundle.summary())
    click.echo(f"bundle: {out} (" + ("data-only: JSON + ONNX" if is_data_only(out)
                                      else f"joblib, + {bundle.path.with_suffix('.json').name}") + ")")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default="predictions.csv",
              show_default=True, help="Per-cell CSV (path, sha256, subject, p_all, pred, status); the per-subject "
                                      "summary goes to <stem>_subjects.csv beside it.")
@click.option("--store", type=click.Path(file_okay=False), default=None, show_default="a temporary store",
              help="Feature store to reuse and fill (by default nothing is kept).")
@deep_option_group(bundle=True)
@jobs_option
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--within-subject", is_flag=True,
              help="Also write each cell's P(ALL) combined with the other cells of its subject (columns "
                   "p_all_within_subject, pred_within_subject). It uses other cells of the same patient.")
@scheduler_option
@max_pixels_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def score(bundle, inputs, output, store, weights_dir, precision, engine, batch_size, jobs, trust, within_subject, scheduler, quiet):
    """Score INPUTS (image files, folders, CSVs with a path column) with a BUNDLE from train/export.

    Every input image gets a row; those that cannot be read or featurised get the reason in the status
    column and do not stop the batch. A data-only bundle (.bsb) holds JSON and ONNX only: loading it runs
    no code from the file. A joblib bundle is a pickle and loading it can run code: only load those you
    trust; its hash is checked against the .json sidecar unless --trust is given.
    """
    opts = deep_options(weights_dir, batch_size=batch_size, precision=precision, engine=engine)
    with session(scheduler):
        result = run_score(bundle, list(inputs), output, store=store, extractor_options=opts, trust=trust,
                           jobs=jobs, progress=not quiet, within_subject=within_subject)
    joblib_note(bundle)
    click.echo(result.summary())


# ---- view -------------------------------------------------------------------------------------
@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but localhost lets other machines (with the token) use the "
                   "page.")
@click.option("--store", type=click.Path(file_okay=False), default=None, show_default="a temporary store",
              help="Feature store to reuse and fill (by default nothing is kept after the server stops).")
@click.option("--max-upload-mb", type=float, default=16.0, show_default=True, help="Largest accepted upload.")
@deep_option_group(bundle=True)
@jobs_option
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@max_pixels_option
@click.option("--allow", "allow", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A folder whose images and CSVs the page may score as a server-side batch (repeatable). "
                   "Default: none; dropped cells need no server-side path.")
def view(bundle, port, host, store, max_upload_mb, weights_dir, precision, engine, batch_size, jobs, trust,
         allow):
    """Serve a local page over BUNDLE: drop cell images (or give a folder/CSV on this machine) and see
    P(ALL), the call, the cell's outline, its key features against the training cells, and the bundle.

    Research use only, not a medical device. It prints the page's URL with a random token; requests
    without the token are refused. Stop it with Ctrl+C; uploads and the default feature store live in a
    temporary folder that is removed then (or at the next start, after a kill).
    """
    opts = deep_options(weights_dir, batch_size=batch_size, precision=precision, engine=engine)
    noted = []

    def echo(line):
        if not noted:  # the first line comes once the bundle is loaded
            noted.append(joblib_note(bundle))
        click.echo(line)

    serve(bundle, host, port, store=store, extractor_options=opts, max_upload_mb=max_upload_mb, jobs=jobs,
          trust=trust, allow=allow, echo=echo)


# ---- demo ------------------------------------------------------------------------------------
@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the store, the comparison report, the bundle and the predictions.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Dataset to use instead of the bundled sample (blastscan/sample, shipped in the package).")
@click.option("--classifiers", default=None, show_default="every registered classifier",
              help="Comma-separated classifiers to compare.")
@deep_option_group(demo=True)
@jobs_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo(out_dir, data, classifiers, weights_dir, precision, engine, batch_size, jobs, seed, quiet):
    """Run the whole loop on the bundled real sample: data, extract, compare, export, score."""

    opts = deep_options(weights_dir, batch_size=batch_size, precision=precision, engine=engine)
    run_demo(out_dir, data=data, extractor_options=opts, jobs=jobs, seed=seed, progress=not quiet,
             classifiers=split_list(classifiers) if classifiers else None, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
