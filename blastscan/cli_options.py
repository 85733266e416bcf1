"""The options several ``blastscan`` commands share (store, weights, jobs, parameters, subjects,
precision), so each is declared once with one wording, and the manifest step every command starts with."""

from __future__ import annotations

import os

import click

from blastscan.bundle import JOBLIB_NOTE
from blastscan.classifiers.finetune import OK_ENV
from blastscan.bundle.data_only import is_data_only
from blastscan.dataset import build_manifest, inspect_cache
from blastscan.dataset.images import PIXEL_BUDGET_ENV
from blastscan.dataset.summary import problems_note
from blastscan.options import DeepOptions

__all__ = ["store_option", "weights_dir_option", "weights_option", "jobs_option", "subject_pattern_option",
           "per_image_split_option", "scheduler_option", "dataset_manifest", "params_option",
           "precision_option", "engine_option", "batch_size_option", "deep_option_group", "deep_options",
           "TRUST_HELP", "no_embed_option", "joblib_note", "bundle_weights_option", "max_pixels_option",
           "yes_option"]


def store_option(f):
    return click.option(
        "--store",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("BLASTSCAN_STORE", "blastscan-store"),
        show_default="blastscan-store or $BLASTSCAN_STORE",
        help="Feature store folder (cache of computed features, shared by all commands).",
    )(f)


def weights_dir_option(show_default: str = "$BLASTSCAN_WEIGHTS_DIR, else the Keras download",
                       help: str = "Folder with ImageNet weight files for the deep backbones."):
    """``--weights-dir`` (default ``$BLASTSCAN_WEIGHTS_DIR``), with the wording of each command."""
    return click.option("--weights-dir", type=click.Path(file_okay=False),
                        default=lambda: os.environ.get("BLASTSCAN_WEIGHTS_DIR"), show_default=show_default,
                        help=help)


def weights_option(f):
    f = click.option(
        "--random-weights",
        is_flag=True,
        help="Use untrained deep backbones (for tests only: their embeddings are meaningless).",
    )(f)
    return weights_dir_option()(f)


def jobs_option(f):
    return click.option(
        "--jobs", "-j", type=int, default=None, show_default="all cores",
        help="Processes for per-image feature work.",
    )(f)


def subject_pattern_option(f):
    return click.option("--subject-pattern", default=None, metavar="REGEX",
                        help="Take the subject from each file name that carries none: group 'subject', else "
                             r"group 1, else the match, e.g. '^(P\d+)_'.")(f)


def per_image_split_option(f):
    return click.option("--per-image-split", is_flag=True,
                        help="Evaluate although some images have no subject (each its own group); every output "
                             "is then labelled LEAKY. Without it such data is refused.")(f)


def scheduler_option(f):
    """``--scheduler``: where the parallel work runs; the command's call is wrapped in
    ``blastscan.parallel.session(scheduler)``."""
    return click.option(
        "--scheduler", default=None, metavar="ADDRESS",
        show_default="$BLASTSCAN_SCHEDULER or $DASK_SCHEDULER_ADDRESS, else local processes",
        help="Run feature chunks and model fits on a Dask cluster: a scheduler address (tcp://host:8786), or "
             "local[:N] to start N local workers; 'none' forces local processes. Needs "
             'pip install "blastscan[dask]".',
    )(f)


def dataset_manifest(dataset, store, jobs, quiet, subject_pattern=None):
    """Build DATASET's manifest (file checks cached in the store) and list its problems briefly on stderr."""
    manifest = build_manifest(dataset, jobs=jobs, progress=not quiet, cache=inspect_cache(store),
                              subject_pattern=subject_pattern)
    if manifest.problems:  # one line, however many problems and of whatever kinds
        click.echo(problems_note(manifest.problems, dataset), err=True)
    return manifest


def yes_option(f):
    """``--yes``: fine-tuning fits run however long their measured rate says they will take (the env switch
    of :mod:`blastscan.classifiers.finetune`, set for this run and the workers it starts)."""
    def apply(ctx, param, value):
        if value:
            os.environ[OK_ENV] = "1"
        return value

    return click.option("--yes", is_flag=True, expose_value=False, callback=apply,
                        help="Run -c finetune fits even where the measured rate predicts more than their "
                             "max_minutes (on a CPU: hours); without it such a fit stops with the estimate.")(f)


def params_option(f):
    f = yes_option(f)  # the commands taking classifier parameters can run finetune
    f = click.option("--params-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help='JSON file of classifier parameters, e.g. {"svm": {"C": 10}}; --param overrides it.')(f)
    return click.option("--param", "params", multiple=True, metavar="CLF.NAME=VALUE",
                        help="Classifier parameter, e.g. --param svm.C=10 (repeatable).")(f)


def precision_option(f, bundle: bool = False, default: str = "auto"):
    if bundle:
        default, shown = None, "the bundle's"
        extra = (" Default: the precision the bundle's features were made with; float32 scores a bf16 bundle on a "
                 "CPU without bfloat16 (features within cosine 0.999 of training's).")
    else:
        shown = True
        extra = (" auto: bf16 where the CPU has bfloat16 instructions (avx512_bf16, amx_bf16, Arm bf16) and "
                 "OpenVINO is installed, else float32; a float32 table the store holds for all the images is "
                 "reused then. float32 gives the same features on every machine (to float32 rounding).")
    return click.option(
        "--precision", type=click.Choice(["auto", "float32", "bf16"]), default=default, show_default=shown,
        help="Deep backbones' arithmetic. bf16 (bfloat16) runs 2.5-7x faster on CPUs with bfloat16 units, gives "
             "embeddings within cosine 0.999 of float32, and is stored as its own feature table." + extra)(f)


def engine_option(f):
    return click.option(
        "--engine", type=click.Choice(["auto", "onnxruntime", "openvino", "tensorflow"]), default=None,
        show_default="$BLASTSCAN_ENGINE, else auto",
        help="What runs the deep backbones. auto: bf16 on OpenVINO; float32 on OpenVINO where the CPU has AVX-512, "
             "else ONNX Runtime (see the README). ONNX Runtime and OpenVINO run the network as an ONNX graph "
             "written once and cached; TensorFlow is the reference. In float32 all give the same features to "
             "float32 rounding, so the store shares them.")(f)


def batch_size_option(f):
    return click.option("--batch-size", type=int, default=None, show_default="32",
                        help="Images per forward pass of the deep backbones (does not change the features).")(f)


def deep_option_group(bundle: bool = False, demo: bool = False):
    """The deep backbones' options, one group on every command that computes features: weights
    (``--weights-dir``, and ``--random-weights`` unless ``bundle`` or ``demo``), ``--precision``, ``--engine``,
    ``--batch-size``. ``bundle`` (score, view): the weights and the precision follow the bundle. ``demo``: the
    precision is float32 unless asked (the demo's figures are the same on every machine), and without weights
    the deep features are skipped."""
    def decorate(f):
        f = batch_size_option(engine_option(precision_option(f, bundle=bundle,
                                                             default="float32" if demo else "auto")))
        if bundle:
            return bundle_weights_option(f)
        if demo:
            return weights_dir_option("$BLASTSCAN_WEIGHTS_DIR, else the Keras cache/download",
                                      "Folder with ImageNet weights; without weights the deep features are "
                                      "skipped.")(f)
        return weights_option(f)
    return decorate


def deep_options(weights_dir=None, random_weights=False, input_size=None, batch_size=None, precision=None,
                 engine=None) -> DeepOptions:
    """The deep option group's values as the one :class:`~blastscan.options.DeepOptions` a command hands down."""
    return DeepOptions(weights_dir=weights_dir, random_weights=bool(random_weights), input_size=input_size,
                       batch_size=batch_size, precision=precision, engine=engine)


# ---- bundles: export / score / view ------------------------------------------------------------
TRUST_HELP = ("Load the bundle even when its .json sidecar is missing or its hash does not match. A bundle is a "
               "pickle: loading one can run any code; only load bundles you trust.")


no_embed_option = click.option(
    "--no-embed", is_flag=True,
    help="Data-only bundles (.bsb): leave the backbones' ONNX graphs out (a smaller file; scoring then needs "
         "the same weight files, checked by their sha256).")


def joblib_note(bundle) -> None:
    """One line on stderr once a joblib bundle was loaded (a refused one gives only its error line): it runs
    code when loaded; the data-only one does not."""
    if not is_data_only(bundle):
        click.echo(JOBLIB_NOTE.format(path=bundle), err=True)


bundle_weights_option = weights_dir_option(
    "$BLASTSCAN_WEIGHTS_DIR, else where training found them",
    "Folder with the ImageNet weight files; they must be the ones the model was trained with.")


def max_pixels_option(f):
    """``--max-pixels``: the pixel budget shared by score and view, for this run and its workers."""
    def apply(ctx, param, value):
        if value is not None:
            if value < 1:
                raise click.BadParameter("expected a positive number of pixels")
            os.environ[PIXEL_BUDGET_ENV] = str(value)  # inherited by worker processes started later
        return value

    return click.option("--max-pixels", type=int, default=None, expose_value=False, callback=apply,
                        show_default="4000000 (2000 x 2000), or $BLASTSCAN_MAX_PIXELS",
                        help="Images with more pixels are refused from their header, before decoding "
                             "(a C-NMC cell is 450 x 450).")(f)
