"""Deep extractor options: the input image (rgb / grey / od) and rotation-flip averaging (tta), their names,
identities, and what they do to real cells."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blastscan.errors import BlastscanError
from blastscan.features import deep, deep_input
from blastscan.features.base import get_extractor, parse_feature_set
from blastscan.features.featureset import FeatureSet

SIZE = 48  # a small input keeps the random-weights network cheap


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv(deep.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def cell(sample_root) -> np.ndarray:
    """A real C-NMC cell (RGB uint8, on its black surround) from the shipped sample."""
    row = next(csv.DictReader(open(sample_root / "manifest.csv")))
    return np.asarray(Image.open(sample_root / row["path"]).convert("RGB"))


# -- names and identities ----------------------------------------------------------------------------
def test_rgb_identity_is_unchanged_and_each_option_has_its_own():
    rgb = get_extractor("inception_v3", random_weights=True)
    assert rgb.identity == "inception_v3@1-43a931244e"  # the identity every existing table carries
    assert get_extractor("inception_v3_rgb_tta1", random_weights=True).identity == rgb.identity
    names = ["inception_v3", "inception_v3_grey", "inception_v3_od", "inception_v3_tta4", "inception_v3_tta8",
             "inception_v3_grey_tta8"]
    exts = [get_extractor(n, random_weights=True) for n in names]
    assert len({e.identity for e in exts}) == len(names)
    assert [e.name for e in exts] == names
    assert exts[-1].config()["input"] == "grey" and exts[-1].config()["tta"] == 8
    assert exts[0].feature_names[0] == "inception_v3_avgpool_0000"  # rgb columns keep their names
    assert exts[-1].feature_names[0] == "inception_v3_grey_tta8_avgpool_0000"  # a union never collides


def test_parts_in_any_order_give_the_canonical_name():
    assert parse_feature_set("size+inception_v3_tta8_grey") == ["size", "inception_v3_grey_tta8"]
    assert parse_feature_set("vgg16_od+vgg16") == ["vgg16_od", "vgg16"]
    with pytest.raises(BlastscanError, match="twice"):
        parse_feature_set("inception_v3_grey+inception_v3_tta1_grey")


@pytest.mark.parametrize("spec, part", [("inception_v3_gray", "unknown option 'gray'"),
                                        ("inception_v3_tta2", "unknown option 'tta2'"),
                                        ("inception_v3_grey_od", "repeated option 'od'"),
                                        ("vgg16_tta8_tta8", "repeated option 'tta8'"),
                                        ("inception_v3_", "unknown option ''"),
                                        ("incepton_v3_grey", "unknown part")])
def test_a_misspelt_option_is_a_one_line_error(spec, part):
    with pytest.raises(BlastscanError, match=part) as err:
        parse_feature_set(spec)
    assert "\n" not in str(err.value)
    with pytest.raises(BlastscanError):
        get_extractor(spec, random_weights=True)


def test_a_recorded_variant_is_rebuilt_with_its_options():
    fs = FeatureSet("size+vgg16_grey_tta4", {"random_weights": True, "input_size": SIZE})
    again = FeatureSet.from_specs(fs.spec, fs.specs(), {})
    assert [e.identity for e in again.extractors] == [e.identity for e in fs.extractors]
    assert again.extractors[1].input_mode == "grey" and again.extractors[1].tta == 4


# -- the input image --------------------------------------------------------------------------------
def test_grey_input_is_the_cells_luminance_in_three_channels(cell):
    from skimage.color import rgb2gray

    grey = deep_input.to_input(cell, "grey")
    assert grey.dtype == np.uint8 and grey.shape == cell.shape
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.abs(grey[..., 0].astype(float) - rgb2gray(cell) * 255).max() <= 0.5 + 1e-3
    assert (grey[cell.max(-1) == 0] == 0).all()  # the black surround stays black
    assert (deep_input.to_input(grey, "grey") == grey).all()  # a grey image is its own luminance
    assert deep_input.to_input(cell, "rgb") is cell


def test_od_input_is_brightest_on_the_nucleus(cell):
    from blastscan.features.segmentation import segment

    od = deep_input.to_input(cell, "od")
    assert (od[..., 0] == od[..., 2]).all()
    assert (od[cell.max(-1) <= deep_input.BACKGROUND_MAX] == 0).all()  # the surround is no stain, not dense stain
    crop, cell_mask, nucleus = segment(cell)
    h = od[..., 0][crop].astype(float)
    assert h[nucleus].mean() > h[cell_mask & ~nucleus].mean() + 10  # haematoxylin stains the nucleus
    assert (h[cell_mask] == 255).mean() < 0.01 and (h[cell_mask] > 0).mean() > 0.99  # the scale fits the stain


def test_dihedral_is_the_group_of_the_square():
    x = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = [deep_input.dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    turned = deep_input.dihedral(x, 1)
    assert {deep_input.dihedral(turned, k).tobytes() for k in range(8)} == {v.tobytes() for v in views}
    assert {deep_input.dihedral(turned, k).tobytes() for k in range(4)} == {v.tobytes() for v in views[:4]}
    with pytest.raises(ValueError):
        deep_input.dihedral(x, 8)


# -- embeddings -------------------------------------------------------------------------------------
def _write_views(cell: np.ndarray, folder: Path) -> list[Path]:
    """The cell at the network's input size (so resizing is a no-op), turned a quarter, and mirrored."""
    small = np.asarray(Image.fromarray(cell).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, im in [("cell", small), ("turned", np.rot90(small)), ("mirrored", small[:, ::-1])]:
        Image.fromarray(np.ascontiguousarray(im)).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def _embed(name: str, paths) -> np.ndarray:
    ext = get_extractor(name, random_weights=True, input_size=SIZE, batch_size=2)
    results = list(ext.compute_paths([str(p) for p in paths]))
    assert not any(r.failures for r in results)
    return np.vstack([r.features for r in results])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_tta8_embedding_of_a_turned_or_mirrored_cell_is_the_cells_own(cell, tmp_path):
    paths = _write_views(cell, tmp_path)
    plain = _embed("vgg16_grey", paths)
    assert np.linalg.norm(plain[0]) > 0
    assert _rel(plain[0], plain[1]) > 1e-3 and _rel(plain[0], plain[2]) > 1e-3  # the network itself is not invariant
    tta8 = _embed("vgg16_grey_tta8", paths)
    assert _rel(tta8[0], tta8[1]) < 1e-5 and _rel(tta8[0], tta8[2]) < 1e-5  # float rounding only
    tta4 = _embed("vgg16_grey_tta4", paths)
    assert _rel(tta4[0], tta4[1]) < 1e-5  # the rotations are averaged ...
    assert _rel(tta4[0], tta4[2]) > 1e-3  # ... the mirror images are not
    # tta8 is the mean of the eight views' plain embeddings
    ext = get_extractor("vgg16_grey", random_weights=True, input_size=SIZE)
    x = np.stack([ext.network_input(np.asarray(Image.open(paths[0])))])
    mean = np.mean([ext.forward(deep_input.dihedral(x, k))[0] for k in range(8)], axis=0)
    assert _rel(mean, tta8[0]) < 1e-5


def test_grey_input_ignores_the_stains_colour(cell, tmp_path):
    paths = _write_views(cell, tmp_path)[:1]
    small = np.asarray(Image.open(paths[0]))
    grey_copy = tmp_path / "grey_copy.png"
    Image.fromarray(deep_input.to_input(small, "grey")).save(grey_copy)
    rgb = _embed("vgg16", [paths[0], grey_copy])
    assert _rel(rgb[0], rgb[1]) > 1e-3
    grey = _embed("vgg16_grey", [paths[0], grey_copy])
    assert np.array_equal(grey[0], grey[1])


# -- intermediate layers ----------------------------------------------------------------------------
def test_a_tapped_layer_has_its_own_name_identity_and_width():
    rgb = get_extractor("inception_v3", random_weights=True)
    tap = get_extractor("inception_v3_mixed7", random_weights=True)
    assert tap.identity != rgb.identity and tap.config()["layer"] == "mixed7"
    assert len(tap.feature_names) == 768 and tap.feature_names[0] == "inception_v3_mixed7_avgpool_0000"
    assert parse_feature_set("inception_v3+inception_v3_tta8_mixed7_grey") == ["inception_v3",
                                                                              "inception_v3_grey_mixed7_tta8"]
    with pytest.raises(BlastscanError, match="unknown option 'mixed11'.*layers: mixed0"):
        parse_feature_set("inception_v3_mixed11")
    with pytest.raises(BlastscanError, match="unknown option 'mixed7'"):  # VGG16 has no such layer
        parse_feature_set("vgg16_mixed7")
    with pytest.raises(BlastscanError, match="no layer"):
        get_extractor("inception_v3", random_weights=True, layer="conv2d")


@pytest.mark.slow
def test_a_tapped_layer_is_the_spatial_mean_of_that_blocks_output():
    """The cut network run by the default engine (the ONNX graph) gives the Keras block's output averaged
    over space, with the width the backbone registry declares for every tap."""
    size = 96
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    full = get_extractor("inception_v3", random_weights=True, input_size=size)
    model = full._keras_model()
    for layer, width in full.backbone.taps:
        assert model.get_layer(layer).output.shape[-1] == width
    import keras

    block = keras.Model(model.input, model.get_layer("mixed7").output)
    ref = np.asarray(block(full.preprocess(list(x)))).mean(axis=(1, 2))
    tap = get_extractor("inception_v3_mixed7", random_weights=True, input_size=size)
    got = tap.forward(x)
    assert got.shape == (2, 768)
    assert _rel(ref[0], got[0]) < 1e-4 and _rel(ref[1], got[1]) < 1e-4


@pytest.mark.slow
def test_cli_a_misspelt_option_is_one_line_and_a_variant_is_extracted_into_its_own_table(sample_root, tmp_path):
    from click.testing import CliRunner

    from blastscan.cli import main
    from blastscan.features.store import FeatureStore

    rows = list(csv.DictReader(open(sample_root / "manifest.csv")))[:4]
    (tmp_path / "cells.csv").write_text("path,label,subject\n" + "".join(
        f"{sample_root / r['path']},{r['label']},{r['subject']}\n" for r in rows))
    store = tmp_path / "store"
    args = ["extract", str(tmp_path / "cells.csv"), "-q", "--store", str(store), "--random-weights",
            "--input-size", str(SIZE), "--precision", "float32"]  # the float32 identities read below
    bad = CliRunner().invoke(main, args + ["-f", "vgg16_gray"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: feature set 'vgg16_gray': unknown option 'gray'")
    ok = CliRunner().invoke(main, args + ["-f", "vgg16,vgg16_grey_tta4"])
    assert ok.exit_code == 0, ok.output
    fstore = FeatureStore(store)
    tables = {}
    for name in ("vgg16", "vgg16_grey_tta4"):
        ident = get_extractor(name, random_weights=True, input_size=SIZE).identity
        assert fstore.meta(ident)["feature_names"][0] == f"{name}_avgpool_0000"
        tables[name] = fstore.read(ident).sort_index()
        assert len(tables[name]) == 4
    assert not np.allclose(tables["vgg16"].to_numpy(), tables["vgg16_grey_tta4"].to_numpy())
