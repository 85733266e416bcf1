"""Rebuild blastscan/sample (the demo's real C-NMC cells, shipped as package data) from the shared
C-NMC 2019 subset, deterministically.

Usage::

    python data/make_sample.py [--source ../shared/data/cnmc2019] [--out blastscan/sample] [--force]

Selection (see blastscan/sample/README.md), by subject and count only: every HEM subject of the
training folds, up to HEM_CAP cells each; the ALL subjects with at least ALL_MIN_CELLS training cells,
ALL_CAP cells each; all preliminary-phase images, with the phase's labels CSV trimmed to the rows of
those images (header and line endings kept). Within a subject, cells are taken in the order of the
sha256 of their original BMP (a fixed pseudo-random order that spreads picks over source images),
so the same source always gives the same sample. Image files are copied byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

HEM_CAP = 40        # H10 and H14 have ~400 cells each: 40 each; the other 14 HEM subjects (1-3 cells), all kept
ALL_MIN_CELLS = 11  # ALL subjects with at least this many training cells (12 subjects; the smallest has 11)
ALL_CAP = 11        # = ALL_MIN_CELLS: every chosen ALL subject weighs the same (132 ALL / 106 HEM training cells)
PRELIM_CSV = "C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv"

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path(os.environ.get("BLASTSCAN_SHARED", REPO.parent / "shared")) / "data" / "cnmc2019"


def select(rows: list[dict]) -> list[dict]:
    """The rows of the source's manifest.csv that go into the sample, in path order."""
    training = defaultdict(list)
    picked = []
    for r in rows:
        if "/training_data/" in r["path"]:
            training[(r["label"], r["subject"])].append(r)
        elif "_prelim_phase_data/" in r["path"]:
            picked.append(r)
    for (label, _subject), cells in training.items():
        cells = sorted(cells, key=lambda r: r["original_bmp_sha256"])
        if label == "hem":
            picked += cells[:HEM_CAP]
        elif len(cells) >= ALL_MIN_CELLS:
            picked += cells[:ALL_CAP]
    return sorted(picked, key=lambda r: r["path"])


def trim_labels_csv(raw: bytes, stems: set[str]) -> bytes:
    """The labels CSV kept to its header and the rows whose ``new_names`` stem is in ``stems``.

    Works on the raw lines so the header, the row text and the line endings (CRLF in the original)
    stay byte for byte as published.
    """
    lines = raw.splitlines(keepends=True)
    header = lines[0].decode().strip().split(",")
    col = header.index("new_names")
    kept = [ln for ln in lines[1:] if ln.strip() and Path(ln.decode().strip().split(",")[col]).stem in stems]
    return b"".join(lines[:1] + kept)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared cnmc2019 folder")
    ap.add_argument("--out", type=Path, default=REPO / "blastscan" / "sample")
    ap.add_argument("--force", action="store_true", help="replace an existing sample")
    args = ap.parse_args(argv)

    src_manifest = args.source / "manifest.csv"
    if not src_manifest.is_file():
        print(f"error: {src_manifest}: not found (pass --source)", file=sys.stderr)
        return 2
    with open(src_manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    picked = select(rows)

    tree = args.out / "C-NMC_Leukemia"
    if tree.exists():
        if not args.force:
            print(f"error: {tree}: exists (pass --force to rebuild it)", file=sys.stderr)
            return 2
        shutil.rmtree(tree)
    for r in picked:
        dst = args.out / r["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.source / r["path"], dst)
    prelim_stems = {Path(r["path"]).stem for r in picked if "_prelim_phase_data/" in r["path"]}
    (args.out / PRELIM_CSV).write_bytes(trim_labels_csv((args.source / PRELIM_CSV).read_bytes(), prelim_stems))
    with open(args.out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(picked)

    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    per = defaultdict(int)
    for r in picked:
        per[r["label"]] += 1
    subjects = {lab: len({r["subject"] for r in picked if r["label"] == lab}) for lab in per}
    print(f"{len(picked)} images ({', '.join(f'{n} {lab}' for lab, n in sorted(per.items()))}; subjects "
          f"{', '.join(f'{n} {lab}' for lab, n in sorted(subjects.items()))}), {size / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
