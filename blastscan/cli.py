"""The ``blastscan`` command line: thin wrappers that parse options and call ``blastscan.pipelines``.

Every command has a Python equivalent in ``blastscan.pipelines``. Expected failures raise
:class:`~blastscan.errors.BlastscanError` and are printed as one line, ``error: <what>: <why>``.
TensorFlow is imported only by the deep-feature code, so ``--help`` and the other commands start fast.
"""

from __future__ import annotations

import functools
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


def _deep_options(weights_dir, random_weights, **extra):
    opts = {"weights_dir": weights_dir, "random_weights": random_weights}
    opts.update({k: v for k, v in extra.items() if v is not None})
    return opts


# ---- data (dataset layer) -------------------------------------------------------------------
# (filled in by the dataset work; keep this section's commands together)


# ---- features (feature dictionary) -----------------------------------------------------------
# (filled in by the handcrafted-features work)


# ---- weights (deep backbones) ------------------------------------------------------------------
# (filled in by the deep-features work)


# ---- extract ---------------------------------------------------------------------------------
# (filled in by the extract pipeline work)


# ---- compare / train (classifiers, evaluation, report) ----------------------------------------
# (filled in by the evaluation work)


# ---- export / score (bundle) -----------------------------------------------------------------
# (filled in by the bundle work)


# ---- demo ------------------------------------------------------------------------------------
# (filled in last: runs the whole loop on the bundled sample)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
