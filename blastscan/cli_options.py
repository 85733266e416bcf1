"""The options several ``blastscan`` commands share (store, weights, jobs, parameters, subjects,
precision), so each is declared once with one wording, and the manifest step every command starts with."""

from __future__ import annotations

import os

import click

__all__ = ["store_option", "weights_dir_option", "weights_option", "jobs_option", "subject_pattern_option",
           "per_image_split_option", "scheduler_option", "dataset_manifest", "params_option", "precision_option", "engine_option", "deep_options"]


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
    """``--scheduler`` (issue 17): where the parallel work runs; the command's call is wrapped in
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
    from blastscan.dataset import build_manifest, inspect_cache
    from blastscan.dataset.summary import problems_note

    manifest = build_manifest(dataset, jobs=jobs, progress=not quiet, cache=inspect_cache(store),
                              subject_pattern=subject_pattern)
    if manifest.problems:  # one line, however many problems and of whatever kinds
        click.echo(problems_note(manifest.problems, dataset), err=True)
    return manifest


def params_option(f):
    f = click.option("--params-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help='JSON file of classifier parameters, e.g. {"svm": {"C": 10}}; --param overrides it.')(f)
    return click.option("--param", "params", multiple=True, metavar="CLF.NAME=VALUE",
                        help="Classifier parameter, e.g. --param svm.C=10 (repeatable).")(f)


def precision_option(f):
    return click.option(
        "--precision", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
        help="Deep backbones' arithmetic. bf16 (bfloat16) is faster on CPUs with avx512_bf16/amx_bf16, gives "
             "embeddings within cosine 0.999 of float32, and is stored as its own feature table.")(f)


def engine_option(f):
    return click.option(
        "--engine", type=click.Choice(["auto", "onnxruntime", "tensorflow"]), default=None,
        show_default="$BLASTSCAN_ENGINE, else auto",
        help="What runs the deep backbones in float32: auto takes ONNX Runtime (about 1.5x TensorFlow on CPU; "
             "the network is written as an ONNX graph once and cached) and falls back to TensorFlow. Both give "
             "the same features up to float32 rounding, so the store shares them; bf16 runs on TensorFlow.")(f)


def deep_options(weights_dir, random_weights, **extra):
    from blastscan.options import clean_options

    if extra.get("precision") == "float32":  # the default: options (and records) as before bf16 existed
        extra["precision"] = None
    return {"weights_dir": weights_dir, "random_weights": random_weights, **clean_options(extra)}
