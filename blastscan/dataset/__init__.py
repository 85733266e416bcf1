"""Find the images of a dataset, check every one, and describe them in a manifest (one row per image).

The package, in the order data flows through it:

- :mod:`.layouts` finds the files of a C-NMC tree, class folders, a CSV list or plain files, and what
  their place says about them (label, subject, split), with :func:`parse_cnmc_name` / :func:`parse_label`;
- :mod:`.images` reads and checks each file once (decoding policy, :func:`load_image`, the check cache);
- :mod:`.manifest` assembles the :class:`Manifest` (:func:`build_manifest`), links duplicates into
  subject groups (:func:`assign_groups`) and reads and writes manifests;
- :mod:`.summary` turns a manifest into the text a person checks (:func:`summarize`).

Problems are collected, one line per file (:class:`Problem`), never raised one by one; only
"nothing usable" raises.
"""

from blastscan.dataset.images import IMAGE_EXTENSIONS, INSPECT_CACHE, inspect_cache, load_image
from blastscan.dataset.layouts import find_cnmc_roots, natural_key, parse_cnmc_name, parse_label
from blastscan.dataset.manifest import (
    COLUMNS,
    Manifest,
    assign_groups,
    build_manifest,
    duplicate_table,
    labelled,
    labelled_rows,
    read_manifest,
    write_manifest,
)
from blastscan.dataset.problems import Problem
from blastscan.dataset.summary import format_problems, summarize

__all__ = [
    "COLUMNS",
    "IMAGE_EXTENSIONS",
    "INSPECT_CACHE",
    "Manifest",
    "Problem",
    "assign_groups",
    "build_manifest",
    "duplicate_table",
    "find_cnmc_roots",
    "format_problems",
    "inspect_cache",
    "labelled",
    "labelled_rows",
    "load_image",
    "natural_key",
    "parse_cnmc_name",
    "parse_label",
    "read_manifest",
    "summarize",
    "write_manifest",
]
