"""blastscan.dataset: layouts, labels and subjects, duplicates, image checks, manifest I/O.

Fixtures are small synthetic trees built here with PIL; what each fixture creates is recorded as it is
created, and the manifest is checked against that record. One test reads the real C-NMC subset.
"""

from __future__ import annotations

import csv
import io
import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from blastscan.dataset import (
    COLUMNS,
    IMAGE_EXTENSIONS,
    Problem,
    assign_groups,
    build_manifest,
    find_cnmc_roots,
    labelled,
    load_image,
    parse_cnmc_name,
    parse_label,
    read_manifest,
    summarize,
    write_manifest,
)
from blastscan.errors import BlastscanError

_seed = itertools.count(1)


def _pixels(h=12, w=14, seed=None) -> np.ndarray:
    rng = np.random.default_rng(next(_seed) if seed is None else seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save_image(path: Path, arr: np.ndarray | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(_pixels() if arr is None else arr)
    if mode:
        im = im.convert(mode)
    im.save(path)
    return path


def _png16_rgb(arr16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _rows(df: pd.DataFrame) -> dict[str, tuple]:
    return {Path(p).name: (lab if isinstance(lab, str) else None, s if isinstance(s, str) else None, sp)
            for p, lab, s, sp in zip(df["path"], df["label"], df["subject"], df["source_split"])}


# ---------------------------------------------------------------------------------------------------
def make_cnmc(base: Path, *, ext_cycle=(".bmp", ".png"), prelim=True) -> dict[str, tuple]:
    """A small C-NMC tree under ``base/C-NMC_Leukemia``; returns ``{file name: (label, subject, split)}``."""
    root = base / "C-NMC_Leukemia"
    expected = {}
    exts = itertools.cycle(ext_cycle)
    train = [(0, "all", "11", 3), (0, "hem", "H10", 2), (1, "all", "5", 2), (1, "hem", "H2", 2), (2, "all", "7", 1)]
    for fold, label, subject, n in train:
        for i in range(n):
            name = f"UID_{subject}_{i + 1}_1_{label}{next(exts)}"
            save_image(root / "training_data" / f"fold_{fold}" / label / name)
            expected[name] = (label, subject, f"fold_{fold}")
    # non-image files in the tree are ignored silently
    (root / "training_data" / "README.md").write_text("notes")
    if prelim:
        pdir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
        rows = [("UID_57_29_1_all.bmp", "1.bmp", 1), ("UID_H49_35_1_hem.bmp", "2.bmp", 0),
                ("UID_58_3_2_all.bmp", "3.bmp", 1), ("UID_60_1_1_all.bmp", "4.bmp", 1),
                ("UID_H50_2_2_hem.bmp", "5.bmp", 0)]
        pdir.mkdir(parents=True)
        with open(root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Patient_ID", "new_names", "labels"])
            w.writerows(rows)
        # 1-3 present (stored as .png while the CSV says .bmp, as in our sample); 4-5 missing
        for pid, new, lab in rows[:3]:
            save_image(pdir / f"{Path(new).stem}.png")
            expected[f"{Path(new).stem}.png"] = ("all" if lab == 1 else "hem", parse_cnmc_name(pid)[0], "prelim")
        fdir = root / "testing_data" / "C-NMC_test_final_phase_data"
        for k in (1, 2):
            save_image(fdir / f"{k}.bmp")
            expected[f"final:{k}.bmp"] = (None, None, "final")
    return expected


@pytest.fixture()
def cnmc_tree(tmp_path) -> tuple[Path, dict]:
    top = tmp_path / "download" / "cnmc"
    return top, make_cnmc(top)


def _expected_by_name(expected: dict) -> dict:
    return {k.removeprefix("final:"): v for k, v in expected.items()}


# -- names and labels -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, subject, label", [
    ("UID_H10_14_1_hem.bmp", "H10", "hem"),
    ("UID_11_10_1_all.png", "11", "all"),
    ("uid_h2_3_4_HEM.png", "H2", "hem"),
    ("UID_57_29_1_all", "57", "all"),
    ("1.bmp", None, None),
    ("cell_7.png", None, None),
])
def test_parse_cnmc_name(name, subject, label):
    assert parse_cnmc_name(name) == (subject, label)


@pytest.mark.parametrize("raw, label", [("all", "all"), ("ALL", "all"), ("1", "all"), (1, "all"), (" 1 ", "all"),
                                        ("hem", "hem"), ("Hem", "hem"), ("0", "hem"), (0, "hem"), ("", None),
                                        (None, None)])
def test_parse_label_maps_1_to_all_and_0_to_hem(raw, label):
    assert parse_label(raw) == label


def test_parse_label_refuses_other_values():
    with pytest.raises(ValueError, match="unknown label"):
        parse_label("2")


# -- C-NMC layout ---------------------------------------------------------------------------------------
def test_cnmc_layout_labels_subjects_and_splits(cnmc_tree):
    top, expected = cnmc_tree
    m = build_manifest(top)
    assert m.layout == "cnmc"
    assert m.root == top / "C-NMC_Leukemia"
    assert list(m.df.columns) == COLUMNS
    got = _rows(m.df)
    assert got == _expected_by_name(expected)
    assert {Path(p).suffix for p in m.df["path"]} == {".bmp", ".png"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.df["path"])
    assert (m.df["width"] == 14).all() and (m.df["height"] == 12).all()
    assert (m.df["dup_group"] == -1).all()
    # no duplicates: the group is the subject, or the image itself when it has no subject
    with_subject = m.df["subject"].notna()
    assert (m.df.loc[with_subject, "group"] == m.df.loc[with_subject, "subject"]).all()
    finals = m.df[m.df["source_split"] == "final"]
    assert list(finals["group"]) == ["img:" + s[:12] for s in finals["sha256"]]


def test_cnmc_prelim_missing_rows_and_label_mapping(cnmc_tree):
    top, _ = cnmc_tree
    m = build_manifest(top)
    missing = [p for p in m.problems if p.kind == "missing_image"]
    assert sorted(Path(p.path).name for p in missing) == ["4.bmp", "5.bmp"]
    assert all("C-NMC_test_prelim_phase_data_labels.csv" in p.reason for p in missing)
    # 1 = ALL with an _all original name, 0 = HEM with an _hem one: no disagreement reported
    assert not [p for p in m.problems if p.kind == "label_conflict"]
    assert len(m.problems) == 2
    assert any("prelim: 3 images labelled" in n for n in m.notes)


@pytest.mark.parametrize("where", ["top", "C-NMC_Leukemia", "above", "two above"])
def test_cnmc_found_from_any_level(cnmc_tree, where):
    top, expected = cnmc_tree
    start = {"top": top, "C-NMC_Leukemia": top / "C-NMC_Leukemia", "above": top.parent,
             "two above": top.parent.parent}[where]
    m = build_manifest(start)
    assert m.layout == "cnmc"
    assert _rows(m.df) == _expected_by_name(expected)


def test_find_cnmc_roots_stops_at_the_shallowest(cnmc_tree):
    top, _ = cnmc_tree
    assert find_cnmc_roots(top.parent) == [top / "C-NMC_Leukemia"]
    assert find_cnmc_roots(top / "C-NMC_Leukemia" / "training_data") == [top / "C-NMC_Leukemia" / "training_data"]


def test_pointing_at_training_data_keeps_folds(cnmc_tree):
    top, expected = cnmc_tree
    m = build_manifest(top / "C-NMC_Leukemia" / "training_data")
    assert _rows(m.df) == {k: v for k, v in expected.items() if v[2].startswith("fold_")}


def test_prelim_label_disagreeing_with_original_name_is_reported(tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    make_cnmc(tmp_path, prelim=False)
    pdir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    save_image(pdir / "1.bmp")
    save_image(pdir / "2.bmp")
    save_image(pdir / "3.bmp")  # not in the CSV
    (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_H49_35_1_hem.bmp,1.bmp,1\nUID_57_29_1_all.bmp,2.bmp,1\n")
    m = build_manifest(root)
    rows = _rows(m.df)
    assert rows["1.bmp"] == (None, "H49", "prelim")  # CSV says ALL, the name says HEM: label left empty
    assert rows["2.bmp"] == ("all", "57", "prelim")
    assert rows["3.bmp"] == (None, None, "prelim")
    conflict = [p for p in m.problems if p.kind == "label_conflict"]
    assert len(conflict) == 1 and conflict[0].path.endswith("1.bmp") and "UID_H49_35_1_hem.bmp" in conflict[0].reason
    no_label = [p for p in m.problems if p.kind == "no_label"]
    assert len(no_label) == 1 and no_label[0].path.endswith("3.bmp")


def test_prelim_without_csv_is_one_problem(tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    make_cnmc(tmp_path, prelim=False)
    for k in (1, 2):
        save_image(root / "validation_data" / "C-NMC_test_prelim_phase_data" / f"{k}.bmp")
    m = build_manifest(root)
    assert len(m.df[m.df["source_split"] == "prelim"]) == 2
    assert [p.kind for p in m.problems] == ["no_label"]


def test_folder_label_disagreeing_with_name(tmp_path):
    root = tmp_path / "C-NMC_Leukemia" / "training_data" / "fold_0"
    save_image(root / "all" / "UID_3_1_1_all.png")
    bad = save_image(root / "hem" / "UID_3_1_2_all.png")
    m = build_manifest(tmp_path)
    assert _rows(m.df)["UID_3_1_2_all.png"] == (None, "3", "fold_0")
    assert [(p.path, p.kind) for p in m.problems] == [(str(bad), "label_conflict")]


# -- duplicates and groups -------------------------------------------------------------------------------
def test_duplicates_merge_subjects_into_one_group(tmp_path):
    train = tmp_path / "C-NMC_Leukemia" / "training_data"
    shared = _pixels()
    shared2 = _pixels()
    save_image(train / "fold_0" / "all" / "UID_20_1_1_all.bmp", shared)
    save_image(train / "fold_0" / "all" / "UID_20_2_1_all.bmp")
    save_image(train / "fold_1" / "all" / "UID_21_5_2_all.bmp", shared)
    save_image(train / "fold_1" / "all" / "UID_21_6_2_all.bmp", shared2)
    save_image(train / "fold_2" / "all" / "UID_25_1_1_all.bmp", shared2)   # 25 is linked to 20 through 21
    save_image(train / "fold_2" / "all" / "UID_30_1_1_all.bmp")           # unrelated
    save_image(train / "fold_0" / "hem" / "UID_H2_1_1_hem.bmp", shared := _pixels())
    save_image(train / "fold_1" / "hem" / "UID_H10_1_1_hem.bmp", shared)
    same_subject = _pixels()
    save_image(train / "fold_0" / "hem" / "UID_H3_1_1_hem.bmp", same_subject)
    save_image(train / "fold_0" / "hem" / "UID_H3_1_2_hem.bmp", same_subject)
    m = build_manifest(tmp_path)
    df = m.df.set_index(m.df["path"].map(lambda p: Path(p).stem))
    for s in ("UID_20_1_1_all", "UID_20_2_1_all", "UID_21_5_2_all", "UID_21_6_2_all", "UID_25_1_1_all"):
        assert df.loc[s, "group"] == "20+21+25"
    assert df.loc["UID_30_1_1_all", "group"] == "30"
    assert df.loc["UID_H2_1_1_hem", "group"] == df.loc["UID_H10_1_1_hem", "group"] == "H2+H10"
    assert df.loc["UID_H3_1_1_hem", "group"] == "H3"
    # subjects are kept as they are; only the split unit is merged
    assert df.loc["UID_21_5_2_all", "subject"] == "21"
    # one dup_group id per distinct duplicated content
    pairs = [("UID_20_1_1_all", "UID_21_5_2_all"), ("UID_21_6_2_all", "UID_25_1_1_all"),
             ("UID_H2_1_1_hem", "UID_H10_1_1_hem"), ("UID_H3_1_1_hem", "UID_H3_1_2_hem")]
    ids = [df.loc[a, "dup_group"] for a, _ in pairs]
    assert all(df.loc[a, "dup_group"] == df.loc[b, "dup_group"] >= 0 for a, b in pairs)
    assert len(set(ids)) == 4
    assert df.loc["UID_30_1_1_all", "dup_group"] == -1
    dups = m.duplicates()
    assert sorted(dups["subjects"]) == ["20+21", "21+25", "H2+H10", "H3"]
    text = summarize(m)
    assert "4 groups of identical images (8 files)" in text
    assert "20+21+25" in text and "H2+H10" in text


def test_duplicate_without_subject_joins_the_subject_group_and_label_clash(tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    same = _pixels()
    save_image(root / "training_data" / "fold_0" / "all" / "UID_20_1_1_all.png", same)
    save_image(root / "training_data" / "fold_0" / "hem" / "UID_H5_1_1_hem.png", same)  # same content, other label
    save_image(root / "testing_data" / "C-NMC_test_final_phase_data" / "1.png", same)  # same bytes: same format
    save_image(root / "testing_data" / "C-NMC_test_final_phase_data" / "2.bmp", twin := _pixels())
    save_image(root / "testing_data" / "C-NMC_test_final_phase_data" / "3.bmp", twin)
    m = build_manifest(tmp_path)
    g = dict(zip(m.df["path"].map(lambda p: Path(p).name), m.df["group"]))
    assert g["UID_20_1_1_all.png"] == g["UID_H5_1_1_hem.png"] == g["1.png"] == "20+H5"
    sha = m.df.loc[m.df["path"].str.endswith("2.bmp"), "sha256"].iloc[0]
    assert g["2.bmp"] == g["3.bmp"] == f"img:{sha[:12]}"
    clash = [p for p in m.problems if p.kind == "dup_label"]
    assert len(clash) == 1 and "labelled" in clash[0].reason


# -- image checks ----------------------------------------------------------------------------------------
@pytest.fixture()
def odd_images(tmp_path) -> tuple[Path, dict]:
    """Class folders holding one image of each awkward kind; returns ``{name: accepted?}``."""
    root = tmp_path / "cells"
    a, h = root / "all", root / "hem"
    save_image(a / "good.png")
    (a / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (a / "random.bmp").write_bytes(np.random.default_rng(0).bytes(500))
    buf = io.BytesIO()
    Image.fromarray(_pixels(64, 64)).save(buf, "PNG")
    (a / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(_pixels(64, 64)).save(buf, "BMP")
    (a / "truncated.bmp").write_bytes(buf.getvalue()[:-500])
    (a / "rgb16.png").write_bytes(_png16_rgb((np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)))
    four = np.array([[0, 0, 0], [200, 30, 90], [250, 250, 250], [60, 120, 200]], np.uint8)
    pal = four[np.random.default_rng(1).integers(0, 4, size=(10, 11))]
    h.mkdir(parents=True)
    for name in ("palette.png", "palette.bmp"):  # 4 colours: the palette holds them exactly
        Image.fromarray(pal).quantize(colors=4, method=Image.Quantize.MEDIANCUT).save(h / name)
    rgba = np.dstack([_pixels(), np.full((12, 14), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(h / "rgba_opaque.png")
    rgba_t = rgba.copy()
    rgba_t[0, 0, 3] = 0
    Image.fromarray(rgba_t, "RGBA").save(h / "rgba_transparent.png")
    save_image(h / "gray.png", mode="L")
    Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).save(h / "gray16.png")
    save_image(h / "bw.png", mode="1")
    save_image(h / "cmyk.tif", mode="CMYK")
    frames = [Image.fromarray(_pixels()) for _ in range(2)]
    frames[0].save(h / "frames.tif", save_all=True, append_images=frames[1:])
    accepted = {"good.png": True, "corrupt.png": False, "random.bmp": False, "truncated.png": False,
                "truncated.bmp": False, "rgb16.png": True, "palette.png": True, "palette.bmp": True,
                "rgba_opaque.png": True, "rgba_transparent.png": False, "gray.png": False, "gray16.png": False,
                "bw.png": False, "cmyk.tif": False, "frames.tif": False}
    return root, {"pal": pal, "accepted": accepted}


def test_bad_and_odd_images_are_reported_once_each(odd_images):
    root, info = odd_images
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    m = build_manifest(root)
    assert m.layout == "folders"
    kept = set(m.df["path"].map(lambda p: Path(p).name))
    assert kept == {n for n, ok in info["accepted"].items() if ok}
    refused = {Path(p.path).name: p for p in m.problems if p.kind != "no_subject"}
    assert set(refused) == {n for n, ok in info["accepted"].items() if not ok}
    # kept images carry no subject: each is a listed problem, never silently its own patient
    assert {Path(p.path).name for p in m.problems if p.kind == "no_subject"} == kept
    for name, p in refused.items():
        assert str(p) == f"{p.path}: {p.reason}" and Path(p.path).is_absolute()
        assert p.kind in ("unreadable", "mode")
    assert refused["truncated.png"].kind == "unreadable" and "truncated" in refused["truncated.png"].reason
    assert "grayscale" in refused["gray16.png"].reason and "16-bit" in refused["gray16.png"].reason
    assert "transparent" in refused["rgba_transparent.png"].reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert any("converted to RGB" in n for n in m.notes)


def test_load_image_conversions_match_the_source_pixels(odd_images):
    root, info = odd_images
    for name in ("palette.png", "palette.bmp"):
        img = load_image(root / "hem" / name)
        assert img.dtype == np.uint8 and img.shape == (10, 11, 3)
        np.testing.assert_array_equal(img, info["pal"])
    rgb16 = load_image(root / "all" / "rgb16.png")
    np.testing.assert_array_equal(rgb16, ((np.arange(60).reshape(4, 5, 3) * 1000) >> 8).astype(np.uint8))
    opaque = load_image(root / "hem" / "rgba_opaque.png")
    assert opaque.shape == (12, 14, 3)


@pytest.mark.parametrize("name", ["truncated.png", "gray.png", "rgba_transparent.png", "corrupt.png"])
def test_load_image_refuses_with_blastscan_error(odd_images, name):
    root, _ = odd_images
    path = next(root.rglob(name))
    with pytest.raises(BlastscanError) as err:
        load_image(path)
    assert err.value.what == str(path) and err.value.why


def test_load_image_missing_file():
    with pytest.raises(BlastscanError, match="cannot read"):
        load_image("/nonexistent/x.png")


# -- class folders, CSV, lists -------------------------------------------------------------------------
def test_class_folders(tmp_path):
    root = tmp_path / "cells"
    save_image(root / "all" / "a1.png")
    save_image(root / "batch2" / "hem" / "h1.jpg")
    save_image(root / "batch2" / "hem" / "UID_H7_1_1_hem.tif")
    save_image(root / "hem" / "UID_4_1_1_all.png")  # folder says hem, name says all
    stray = save_image(root / "unsorted" / "x.png")
    (root / "README.md").write_text("hello")
    (root / "all" / "labels.csv").write_text("path,label\n")
    (root / "all" / "._a1.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: skipped
    m = build_manifest(root)
    assert m.layout == "folders"
    assert _rows(m.df) == {"a1.png": ("all", None, "folders"), "h1.jpg": ("hem", None, "folders"),
                           "UID_H7_1_1_hem.tif": ("hem", "H7", "folders"),
                           "UID_4_1_1_all.png": (None, "4", "folders"), "x.png": (None, None, "folders")}
    kinds = {Path(p.path).name: p.kind for p in m.problems}
    assert kinds == {"UID_4_1_1_all.png": "label_conflict", "x.png": "no_label", "a1.png": "no_subject",
                     "h1.jpg": "no_subject"}
    assert str(stray) in {p.path for p in m.problems}
    assert len(labelled(m.df)) == 3


def test_csv_layout(tmp_path):
    imgs = tmp_path / "imgs"
    a = save_image(imgs / "a.png")
    b = save_image(imgs / "sub" / "b.bmp")
    c = save_image(tmp_path / "elsewhere" / "UID_H8_2_3_hem.png")
    d = save_image(imgs / "d.png")
    e = save_image(imgs / "e.png")
    f = save_image(imgs / "f.png")
    (imgs / "notes.txt").write_text("x")
    text = ("path,label,subject\n"
            "a.png,1,p1\n"
            "sub/b.bmp,0,\n"
            f"{c},HEM,\n"
            "missing.png,all,p9\n"
            "d.png,maybe,p1\n"
            "e.png,,p2\n"
            "notes.txt,all,\n"
            "f.png,all,p3\n"
            "a.png,all,p1\n")
    (imgs / "list.csv").write_text(text)
    m = build_manifest(imgs / "list.csv")
    assert m.layout == "csv"
    rows = _rows(m.df)
    assert rows == {"a.png": ("all", "p1", "csv"), "b.bmp": ("hem", None, "csv"),
                    "UID_H8_2_3_hem.png": ("hem", "H8", "csv"), "d.png": (None, "p1", "csv"),
                    "e.png": (None, "p2", "csv"), "f.png": ("all", "p3", "csv")}
    kinds = sorted((Path(p.path).name, p.kind) for p in m.problems)
    assert kinds == [("a.png", "listed_twice"), ("b.bmp", "no_subject"), ("d.png", "no_label"),
                     ("e.png", "no_label"), ("missing.png", "missing_image"), ("notes.txt", "not_an_image")]
    assert {str(a), str(b), str(c), str(d), str(e), str(f)} == set(m.df["path"])


def test_csv_without_path_column(tmp_path):
    (tmp_path / "x.csv").write_text("file,label\na.png,all\n")
    with pytest.raises(BlastscanError, match="'path' column"):
        build_manifest(tmp_path / "x.csv")
    # among several inputs it is one problem, not the end of the run
    save_image(tmp_path / "a.png")
    m = build_manifest([str(tmp_path / "x.csv"), str(tmp_path / "a.png")])
    assert len(m.df) == 1 and [p.kind for p in m.problems] == ["csv"]


def test_written_manifest_reads_back_as_a_dataset(cnmc_tree, tmp_path):
    top, _ = cnmc_tree
    m = build_manifest(top)
    out = write_manifest(m.df, tmp_path / "m.csv")
    again = build_manifest(out)
    assert again.layout == "csv" and not again.problems
    pd.testing.assert_frame_equal(again.df, m.df)


def test_list_of_files_and_folders(tmp_path):
    folder = tmp_path / "new"
    save_image(folder / "UID_12_1_1_all.bmp")
    save_image(folder / "deep" / "7.png")
    (folder / "README.md").write_text("a stray file in a folder to score is reported too")
    single = save_image(tmp_path / "UID_H3_2_2_hem.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    m = build_manifest([str(folder), str(single), str(notes), str(tmp_path / "gone.png"), str(single)])
    assert m.layout == "files"
    assert _rows(m.df) == {"UID_12_1_1_all.bmp": ("all", "12", "files"), "7.png": (None, None, "files"),
                           "UID_H3_2_2_hem.png": ("hem", "H3", "files")}
    kinds = sorted((Path(p.path).name, p.kind) for p in m.problems)
    assert kinds == [("README.md", "not_an_image"), ("UID_H3_2_2_hem.png", "listed_twice"),
                     ("gone.png", "missing_image"), ("notes.txt", "not_an_image")]


def test_plain_folder_is_files_layout(tmp_path):
    save_image(tmp_path / "x" / "1.png")
    save_image(tmp_path / "x" / "UID_9_1_1_all.png")
    m = build_manifest(tmp_path / "x")
    assert m.layout == "files" and not m.problems
    assert _rows(m.df) == {"1.png": (None, None, "files"), "UID_9_1_1_all.png": ("all", "9", "files")}


@pytest.mark.parametrize("case", ["empty", "only text", "only corrupt", "missing", "empty list"])
def test_nothing_usable_raises(tmp_path, case):
    src = tmp_path / "d"
    src.mkdir()
    if case == "only text":
        (src / "README.md").write_text("x")
        (src / "a.csv").write_text("Patient_ID,new_names,labels\n")
    elif case == "only corrupt":
        (src / "all").mkdir()
        (src / "all" / "x.png").write_bytes(b"not a png")
    elif case == "missing":
        src = tmp_path / "nope"
    if case == "empty list":
        src = []
    with pytest.raises(BlastscanError) as err:
        build_manifest(src)
    assert err.value.why


# -- parallel reading, manifest I/O, summary -------------------------------------------------------------
def test_threads_give_the_same_manifest(tmp_path):
    for i in range(40):
        save_image(tmp_path / ("all" if i % 2 else "hem") / f"UID_{'' if i % 2 else 'H'}{i % 5}_{i}_1_"
                                                        f"{'all' if i % 2 else 'hem'}.png")
    one = build_manifest(tmp_path, jobs=1)
    two = build_manifest(tmp_path, jobs=2, progress=True)
    pd.testing.assert_frame_equal(one.df, two.df)
    assert len(one.df) == 40


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_round_trip(cnmc_tree, tmp_path, suffix):
    top, _ = cnmc_tree
    df = build_manifest(top).df
    path = write_manifest(df, tmp_path / "out" / f"manifest{suffix}")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, df)
    assert back.loc[back["subject"].notna(), "subject"].map(type).eq(str).all()  # "11" stays a string
    assert back["label"].isna().sum() == 2


def test_manifest_io_errors(tmp_path):
    with pytest.raises(BlastscanError, match=".csv or .parquet"):
        write_manifest(pd.DataFrame({"path": []}), tmp_path / "m.txt")
    with pytest.raises(BlastscanError, match="no such manifest"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BlastscanError, match="not a manifest"):
        read_manifest(tmp_path / "bad.csv")


def test_summary_says_rows_without_images_once_per_csv_and_truncates_other_problems(tmp_path):
    from blastscan.dataset.summary import problems_note

    root = tmp_path / "C-NMC_Leukemia"
    save_image(root / "training_data" / "fold_0" / "all" / "UID_1_1_1_all.png")
    for k in range(30):  # 30 unreadable files: listed 20 by 20
        (root / "training_data" / "fold_0" / "all" / f"UID_3_{k}_1_all.png").write_bytes(b"not an image")
    save_image(root / "validation_data" / "C-NMC_test_prelim_phase_data" / "1.bmp")
    lines = ["Patient_ID,new_names,labels", "UID_2_1_1_all.bmp,1.bmp,1"]
    lines += [f"UID_2_{k}_1_all.bmp,{k}.bmp,1" for k in range(2, 27)]  # 25 rows without an image
    (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\n".join(lines) + "\n")
    m = build_manifest(root)
    text = summarize(m)
    assert "2 images: 2 all, 0 hem, 0 unlabelled" in text
    assert "subjects: 2 all, 0 hem" in text
    assert "prelim: 1 image labelled from" in text and "(of its 26 rows)" in text
    # the 25 rows without an image: one line, with the count, the CSV and its lines; not one line per row
    said = [ln for ln in text.splitlines() if "C-NMC_test_prelim_phase_data_labels.csv" in ln]
    assert said[-1] == "  C-NMC_test_prelim_phase_data_labels.csv: 25 rows (lines 3-27) list an image that is not here"
    assert len(said) == 2 and not [ln for ln in text.splitlines() if ": listed in" in ln]
    assert "problems: 55" in text and "... and 11 more" in text  # 20 lines in all: the CSV's and 19 files
    # what the other commands say: one line
    note = problems_note(m.problems, "DATA")
    assert note.count("\n") == 0 and "25 rows (lines 3-27)" in note and "30 unreadable" in note
    assert note.endswith("`blastscan data DATA --problems FILE` writes the list")


def test_problem_str():
    assert str(Problem("/a/b.png", "truncated")) == "/a/b.png: truncated"


# -- real data ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_cnmc_subset_matches_its_manifest(cnmc_root):
    ref = pd.read_csv(cnmc_root / "manifest.csv", dtype=str)
    m = build_manifest(cnmc_root / "C-NMC_Leukemia", jobs=2)
    df = m.df
    assert m.layout == "cnmc"
    assert len(df) == len(ref)
    assert df["label"].value_counts().to_dict() == ref["label"].value_counts().to_dict()
    for label in ("all", "hem"):
        assert df.loc[df["label"] == label, "subject"].nunique() == ref.loc[ref["label"] == label, "subject"].nunique()
    rel = df["path"].map(lambda p: str(Path(p).relative_to(cnmc_root)))
    got = pd.DataFrame({"path": rel, "label": df["label"].astype(str), "subject": df["subject"].astype(str)})
    merged = ref.merge(got, on="path", suffixes=("_ref", ""), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["label"] == merged["label_ref"]).all() and (merged["subject"] == merged["subject_ref"]).all()
    prelim = ref["path"].str.contains("prelim_phase_data/")
    assert (df["source_split"] == "prelim").sum() == prelim.sum()
    csv_rows = sum(1 for _ in open(next(cnmc_root.rglob("*prelim_phase_data_labels.csv")))) - 1
    missing = [p for p in m.problems if p.kind == "missing_image"]
    assert len(missing) == csv_rows - prelim.sum()
    assert len(m.problems) == len(missing)
    # pointing above the tree gives the same manifest
    pd.testing.assert_frame_equal(build_manifest(cnmc_root, jobs=2).df, df)


def test_groups_of_the_full_dataset_from_its_checksums(cnmc_root):
    """The full 15,114-image dataset's duplicates, from the shared checksum list (no images needed),
    against what the data's README states: 106 identical groups; 20 and 21 share 71 images, 51 and 78
    share 11, 51 and 75 share 10; H2 shares with H4, H5 and H6."""
    tsv = cnmc_root.parent / "cnmc2019-kaggle-sha256.tsv"
    if not tsv.is_file():
        pytest.skip("checksum list not present")
    t = pd.read_csv(tsv, sep="\t")
    t = t[t["path"].str.lower().str.endswith(IMAGE_EXTENSIONS)].sort_values("path").reset_index(drop=True)
    prelim_csv = pd.read_csv(next(cnmc_root.rglob("*prelim_phase_data_labels.csv")))
    original = dict(zip(prelim_csv["new_names"], prelim_csv["Patient_ID"]))
    parsed = [parse_cnmc_name(original.get(Path(p).name, Path(p).name) if "prelim" in p else Path(p).name)
              for p in t["path"]]
    t["subject"] = [s for s, _ in parsed]
    t["label"] = [lab for _, lab in parsed]
    problems: list = []
    g = assign_groups(t, problems)
    dups = g[g["dup_group"] >= 0]
    assert dups["dup_group"].nunique() == 106
    pair_counts = dups.groupby("dup_group")["subject"].agg(lambda s: frozenset(s.dropna())).value_counts()
    assert pair_counts[frozenset({"20", "21"})] == 71
    assert pair_counts[frozenset({"51", "78"})] == 11
    assert pair_counts[frozenset({"51", "75"})] == 10
    group_of = dict(zip(g["subject"], g["group"]))
    assert group_of["20"] == group_of["21"] == "20+21"
    assert group_of["51"] == group_of["75"] == group_of["78"]
    assert group_of["H2"] == group_of["H4"] == group_of["H5"] == group_of["H6"]
    # every set of identical images lies inside one split group, whatever the split
    assert (dups.groupby("dup_group")["group"].nunique() == 1).all()
    # no identical image carries both labels in the real data
    assert not problems


def test_sample_is_what_make_sample_selects(sample_root, cnmc_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample", Path(__file__).resolve().parents[1] / "data" / "make_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ref = list(csv.DictReader(open(cnmc_root / "manifest.csv")))
    sample_rows = list(csv.DictReader(open(sample_root / "manifest.csv")))
    assert mod.select(ref) == sample_rows
    m = build_manifest(sample_root)
    got = _rows(m.df)
    assert {Path(r["path"]).name: (r["label"], r["subject"]) for r in sample_rows} == \
        {k: v[:2] for k, v in got.items()}
    assert sum(p.stat().st_size for p in sample_root.rglob("*") if p.is_file()) < 10e6


def test_inspect_cache_reuses_unchanged_files_and_rereads_changed_ones(tmp_path, monkeypatch):
    import os

    from blastscan.dataset import images

    root = tmp_path / "cells"
    for label in ("all", "hem"):
        for i in range(3):
            save_image(root / label / f"UID_{label}{i}_1_1_{label}.png", _pixels(seed=hash((label, i)) % 1000))
    cache = tmp_path / "store" / "inspected.json"
    first = build_manifest(root, cache=cache)
    assert cache.is_file()

    read = []
    real = images.inspect_file
    monkeypatch.setattr(images, "inspect_file", lambda p: read.append(p) or real(p))
    again = build_manifest(root, cache=cache)
    assert read == []  # nothing re-read or re-hashed
    pd.testing.assert_frame_equal(first.df, again.df)

    changed = root / "all" / "UID_all0_1_1_all.png"
    save_image(changed, _pixels(seed=999))
    os.utime(changed, ns=(1, 1))  # a new mtime even on coarse clocks
    third = build_manifest(root, cache=cache)
    assert read == [str(changed)]
    new_sha = third.df.set_index("path").loc[str(changed), "sha256"]
    assert new_sha != first.df.set_index("path").loc[str(changed), "sha256"]
    pd.testing.assert_frame_equal(third.df, build_manifest(root).df)


def test_a_stray_file_in_a_folder_given_for_scoring_is_reported(tmp_path):
    folder = tmp_path / "new"
    save_image(folder / "UID_5_1_1_all.png", _pixels(seed=1))
    (folder / "notes.txt").write_text("not a cell")
    (folder / ".DS_Store").write_bytes(b"\0")
    m = build_manifest([str(folder)])
    assert len(m.df) == 1
    assert [(Path(p.path).name, p.kind) for p in m.problems] == [("notes.txt", "not_an_image")]


# -- issue 15: subjects, conflicting labels, odd files -------------------------------------------------
def test_csv_listing_one_image_twice_with_two_labels_leaves_it_out(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png", _pixels(seed=3))
    (tmp_path / "list.csv").write_text("path,label,subject\na.png,all,p1\nb.png,hem,p2\na.png,hem,p1\n"
                                       "b.png,,p2\n")
    m = build_manifest(tmp_path / "list.csv")
    rows = _rows(m.df)
    assert rows["a.png"][0] is None and rows["b.png"][0] == "hem"  # conflict left out; an empty repeat is no conflict
    by_kind = {(Path(p.path).name, p.kind): p.reason for p in m.problems}
    assert "left out of training" in by_kind[("a.png", "label_conflict")]
    # the repeated b.png row was not kept, so no message may say it was "kept unlabelled"
    assert set(by_kind) == {("a.png", "label_conflict"), ("b.png", "listed_twice")}


def test_same_content_under_two_labels_is_left_out(tmp_path):
    save_image(tmp_path / "all" / "x.png", _pixels(seed=1))
    save_image(tmp_path / "hem" / "y.png", _pixels(seed=1))  # the same pixels and bytes
    save_image(tmp_path / "hem" / "z.png", _pixels(seed=5))
    m = build_manifest(tmp_path, subject_pattern=r"^(\w)")
    rows = _rows(m.df)
    assert rows["x.png"][0] is None and rows["y.png"][0] is None and rows["z.png"][0] == "hem"
    assert any(p.kind == "dup_label" and "left out of training" in p.reason for p in m.problems)


def test_subject_pattern_and_mixed_subjects(tmp_path):
    save_image(tmp_path / "all" / "P1_a.png")
    save_image(tmp_path / "hem" / "P1_b.png", _pixels(seed=2))
    save_image(tmp_path / "hem" / "P2_c.png", _pixels(seed=3))
    m = build_manifest(tmp_path, subject_pattern=r"^(?P<subject>P\d+)_")
    assert sorted(m.df["subject"]) == ["P1", "P1", "P2"]
    mixed = [p for p in m.problems if p.kind == "mixed_subject"]
    assert len(mixed) == 1 and "subject P1" in str(mixed[0]) and "both classes" in str(mixed[0])
    assert not [p for p in m.problems if p.kind == "no_subject"]
    with pytest.raises(BlastscanError, match="--subject-pattern"):
        build_manifest(tmp_path, subject_pattern="(")


def test_fifo_and_device_are_refused_without_opening(tmp_path):
    import os

    save_image(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would block forever
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    m = build_manifest(tmp_path)
    reasons = {Path(p.path).name: p.reason for p in m.problems if p.kind != "no_subject"}
    assert "named pipe" in reasons["pipe.png"] and "device" in reasons["zero.png"]
    assert list(m.df["path"].map(lambda p: Path(p).name)) == ["ok.png"]


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    from blastscan.dataset import images

    save_image(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    decoded = []
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    res = images.inspect_file(str(tmp_path / "big.png"))
    assert res.problem is not None and "pixel limit" in res.problem.reason and not decoded


def test_sixteen_bit_png_is_noted(tmp_path):
    save_image(tmp_path / "all" / "a.png")
    (tmp_path / "all" / "b.png").write_bytes(_png16_rgb(np.full((4, 5, 3), 3000, np.uint16)))
    m = build_manifest(tmp_path)
    assert "converted to RGB: 1 RGB (16-bit)" in m.notes  # read from the PNG header, whatever Pillow's mode


def test_all_refused_names_every_reason_with_counts(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(b"nor this")
    save_image(tmp_path / "g.png", mode="L")
    with pytest.raises(BlastscanError) as info:
        build_manifest(tmp_path)
    assert "2 unreadable, 1 mode" in str(info.value)
