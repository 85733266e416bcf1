"""Handcrafted families: closed-form shapes, independent references (regionprops, mahotas, skimage), real cells."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from blastscan.errors import BlastscanError
from blastscan.features import segmentation
from blastscan.features.base import get_extractor, parse_feature_set
from blastscan.features.families import chromatin, color, color_absolute, shape, texture
from blastscan.features.handcrafted import HandcraftedExtractor, feature_dictionary, union
from blastscan.features.segmentation import build_context, mask_quality, segment

UNION = union()  # the families of the "handcrafted" feature set


def _canvas(mask: np.ndarray, inside=(200, 60, 150), nucleus=None, nucleus_rgb=(60, 20, 120)) -> np.ndarray:
    img = np.zeros(mask.shape + (3,), np.uint8)
    img[mask] = inside
    if nucleus is not None:
        img[nucleus] = nucleus_rgb
    return img


def _disc(shape_, centre, r):
    yy, xx = np.mgrid[: shape_[0], : shape_[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def _shape(values: dict, region: str, q: str) -> float:
    return values[f"shape_{region}_{q}"]


@pytest.fixture(scope="module")
def real_images(real_cell_paths):
    from blastscan.dataset import load_image

    return [load_image(p) for p in real_cell_paths]


# -- segmentation --------------------------------------------------------------------------------------
def test_saturated_nucleus_is_found_exactly():
    """The nucleus is the saturated part (purple), not the dark part: a dark but grey rim stays cytoplasm."""
    cell = _disc((450, 450), (225, 225), 80)
    nuc = _disc((450, 450), (225, 225), 50)
    img = _canvas(cell, inside=(70, 65, 75), nucleus=nuc, nucleus_rgb=(120, 40, 160))  # cytoplasm darker than nucleus
    ctx = build_context(img)
    assert ctx.nucleus.sum() == pytest.approx(nuc.sum(), rel=0.02)
    assert (ctx.nucleus & ~ctx.cell).sum() == 0 and (ctx.cytoplasm == ctx.cell & ~ctx.nucleus).all()
    assert ctx.nucleus_inner.sum() < ctx.nucleus.sum()
    assert mask_quality(ctx)[1] != []  # N:C (50/80)² = 0.39 is implausible for these cells: flagged, not dropped


def test_morphology_helpers_equal_scipy():
    rng = np.random.default_rng(0)
    for r in (1, 2, 3, 5):
        m = ndi.gaussian_filter(rng.random((70, 90)), 2) > 0.5
        d = segmentation._disc(r)
        assert (segmentation.erode_disc(m, r) == ndi.binary_erosion(m, d, border_value=0)).all()
        assert (segmentation.dilate_disc(m, r) == ndi.binary_dilation(m, d, border_value=0)).all()
        assert (segmentation.fill_holes(m) == ndi.binary_fill_holes(m)).all()


def test_stain_densities_equal_skimage(real_images):
    from skimage.color import rgb2hed

    ctx = build_context(real_images[0])
    assert np.allclose(ctx.hed, rgb2hed(ctx.rgb), atol=1e-5)
    assert np.allclose(ctx.od, -np.log10((ctx.rgb + 1.0) / 256.0), atol=1e-6)


def test_real_cells_nc_ratio_is_that_of_lymphoid_cells(real_images):
    """Correct nucleus masks give N:C ~0.8-0.9 on these cells; the red-channel mask gave ~0.69."""
    ncs = [mask_quality(build_context(img))[0]["nc_ratio"] for img in real_images]
    assert 0.78 <= float(np.median(ncs)) <= 0.93


@pytest.mark.parametrize("case, why", [("black", "black"), ("tiny", "too small"), ("border", "border")])
def test_segmentation_failures(case, why):
    if case == "black":
        img = np.zeros((450, 450, 3), np.uint8)
    elif case == "tiny":
        img = _canvas(_disc((450, 450), (200, 200), 8))
    else:
        img = _canvas(_disc((450, 450), (225, 10), 80))
    with pytest.raises(BlastscanError, match=why) as err:
        segment(img)
    assert err.value.what == "segmentation"
    with pytest.raises(BlastscanError):
        get_extractor("shape").compute(img)


def test_no_nucleus_fails():
    """A uniform cell has no more saturated part: no plausible nucleus."""
    img = _canvas(_disc((450, 450), (225, 225), 80), inside=(120, 60, 140))
    with pytest.raises(BlastscanError, match="nucleus"):
        segment(img)


# -- shape -----------------------------------------------------------------------------------------------
def test_disc_shape_matches_closed_form():
    r = 80
    cell = _disc((450, 450), (225, 225), r)
    nuc = _disc((450, 450), (225, 225), 50)
    v = shape.compute(build_context(_canvas(cell, nucleus=nuc)))
    assert _shape(v, "cell", "area") == pytest.approx(np.pi * r * r, rel=0.01)
    assert _shape(v, "cell", "perimeter") == pytest.approx(2 * np.pi * r, rel=0.02)
    assert _shape(v, "cell", "circularity") == pytest.approx(1.0, abs=0.03)
    assert _shape(v, "cell", "eccentricity") == pytest.approx(0.0, abs=0.05)
    assert _shape(v, "cell", "solidity") == pytest.approx(1.0, abs=0.01)
    assert 0.93 <= _shape(v, "cell", "convexity") <= 1.0
    assert _shape(v, "cell", "feret_max") == pytest.approx(2 * r, rel=0.02)
    assert _shape(v, "cell", "feret_min") == pytest.approx(2 * r, rel=0.02)
    assert _shape(v, "cell", "radial_irregularity") < 0.01
    assert _shape(v, "nucleus", "indentation_max") < 0.02 and _shape(v, "nucleus", "indentation_count") == 0
    assert v["shape_nc_ratio"] == pytest.approx((50 / r) ** 2, rel=0.03)
    assert v["shape_nucleus_offset"] == pytest.approx(0.0, abs=0.01)


def test_rectangle_feret_and_axes():
    h, w = 60, 160
    mask = np.zeros((450, 450), bool)
    mask[100:100 + h, 120:120 + w] = True
    nuc = np.zeros_like(mask)
    nuc[110:150, 140:200] = True
    v = shape.compute(build_context(_canvas(mask, nucleus=nuc)))
    assert _shape(v, "cell", "area") == h * w
    assert _shape(v, "cell", "feret_max") == pytest.approx(np.hypot(h, w), rel=0.01)
    assert _shape(v, "cell", "feret_min") == pytest.approx(h, rel=0.01)
    assert _shape(v, "cell", "extent") == pytest.approx(1.0)
    assert _shape(v, "cell", "aspect_ratio") == pytest.approx(w / h, rel=0.02)  # second moments: ratio of sides
    assert _shape(v, "cell", "circularity") < 0.75


def test_star_nucleus_has_its_indentations():
    """An 8-lobed nucleus: 8 indentations between the lobes, convexity and solidity clearly below 1."""
    cell = _disc((450, 450), (225, 225), 100)
    yy, xx = np.mgrid[:450, :450]
    star = np.cos(8 * np.arctan2(yy - 225, xx - 225)) * 15 + 70 >= np.hypot(yy - 225, xx - 225)
    v = shape.compute(build_context(_canvas(cell, nucleus=star)))
    assert _shape(v, "nucleus", "indentation_count") == 8
    # depth of a notch: from the hull chord between lobe tips (85·cos(22.5°)) to the valley at 55 px
    depth = 85 * np.cos(np.pi / 8) - 55
    assert _shape(v, "nucleus", "indentation_max") == pytest.approx(depth / np.sqrt(star.sum() / np.pi), rel=0.1)
    assert _shape(v, "nucleus", "convexity") < 0.9 and _shape(v, "nucleus", "solidity") < 0.9


def test_shape_agrees_with_regionprops(real_images):
    from skimage.measure import regionprops

    for img in real_images[:6]:
        ctx = build_context(img)
        v = shape.compute(ctx)
        for region, mask in (("cell", ctx.cell), ("nucleus", ctx.nucleus)):
            p = regionprops(mask.astype(np.uint8))[0]
            assert _shape(v, region, "area") == p.area
            assert _shape(v, region, "major_axis") == pytest.approx(p.axis_major_length, rel=1e-6)
            assert _shape(v, region, "eccentricity") == pytest.approx(p.eccentricity, rel=1e-6)
            assert _shape(v, region, "feret_max") == pytest.approx(p.feret_diameter_max, rel=0.02)
            assert _shape(v, region, "solidity") == pytest.approx(p.solidity, abs=0.02)  # polygon vs pixel count
            assert _shape(v, region, "convexity") <= 1.0


# -- texture ---------------------------------------------------------------------------------------------
def test_glcm_of_constant_region_and_checkerboard():
    const = np.zeros((40, 40), np.uint8)
    const[5:35, 5:35] = 7
    p = texture.glcm_properties(const, 32)
    assert np.allclose(p["contrast"], 0) and np.allclose(p["homogeneity"], 1) and np.allclose(p["asm"], 1)
    assert np.allclose(p["correlation"], 1) and np.allclose(p["entropy"], 0)  # documented degenerate value
    checker = np.where((np.indices((40, 40)).sum(0) % 2) == 0, 1, 3).astype(np.uint8)
    p = texture.glcm_properties(checker, 4, distances=(1, 2))
    assert p["contrast"][0, 0] == pytest.approx(4.0)  # d=1 horizontal: every neighbour differs by 2
    assert p["contrast"][0, 1] == pytest.approx(0.0)  # d=1 diagonal (1,1): same colour
    assert p["contrast"][1, 0] == pytest.approx(0.0)  # d=2 horizontal: same colour
    assert p["correlation"][0, 0] == pytest.approx(-1.0)


def test_glcm_offsets_are_explicit_per_direction():
    """d=2 at 45° is the offset (2, 2), not skimage's rounded (1, 1) (the pixels of d=1)."""
    assert texture.glcm_offsets((1, 2, 4)) == [[(0, 1), (1, 1), (1, 0), (1, -1)], [(0, 2), (2, 2), (2, 0), (2, -2)],
                                               [(0, 4), (4, 4), (4, 0), (4, -4)]]
    stripes = np.tile(np.array([1, 1, 2, 2], np.uint8), (40, 10))  # period 4 along columns
    p = texture.glcm_properties(stripes, 2, distances=(1, 2))
    assert p["contrast"][1, 1] == pytest.approx(1.0)  # (2,2) always lands on the other stripe
    assert p["contrast"][0, 1] == pytest.approx(0.5, abs=0.03)  # (1,1) about half the time (edges aside)


def test_glcm_agrees_with_mahotas_per_direction(real_images):
    mahotas = pytest.importorskip("mahotas")
    for img in real_images[:4]:
        ctx = build_context(img)
        levels = texture.quantise(ctx.grey, ctx.nucleus_inner)
        ours = texture.glcm_properties(levels, texture.GREY_LEVELS)
        for k, d in enumerate(texture.GLCM_DISTANCES):
            # mahotas: directions (0,1), (1,1), (1,0), (1,-1) times d; ignore_zeros drops pairs with level 0.
            # Columns: 0 ASM, 1 contrast, 2 correlation, 4 IDM (homogeneity), 8 entropy.
            ref = mahotas.features.haralick(levels, ignore_zeros=True, distance=d)
            assert ours["asm"][k] == pytest.approx(ref[:, 0], rel=1e-6)
            assert ours["contrast"][k] == pytest.approx(ref[:, 1], rel=1e-6)
            assert ours["correlation"][k] == pytest.approx(ref[:, 2], rel=1e-6)
            assert ours["homogeneity"][k] == pytest.approx(ref[:, 4], rel=1e-6)
            assert ours["entropy"][k] == pytest.approx(ref[:, 8], rel=1e-6)


def test_lbp_equals_skimage_on_float_grey(real_images):
    from skimage.feature import local_binary_pattern

    grey = build_context(real_images[1]).grey
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = local_binary_pattern(grey.astype(np.float64), 8, 1, "uniform")
    assert (texture.uniform_lbp(grey, 8, 1) == ref).mean() > 0.999  # float rounding of interpolated neighbours
    assert len(np.unique(grey)) > 5 * len(np.unique(grey.astype(np.uint8)))  # float grey: far fewer ties


def test_log_pyramid_has_the_scale_of_the_full_resolution_filter():
    """σ = 4 and 8 run on block-averaged images; they must match the full-resolution σ²·LoG in size."""
    rng = np.random.default_rng(1)
    img = ndi.gaussian_filter(rng.normal(size=(256, 256)), 3).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[40:216, 40:216] = True
    for s in (4.0, 8.0):
        full = ndi.gaussian_laplace(img, s)[mask] * s * s
        assert texture.log_energy(img, mask, s).std() == pytest.approx(full.std(), rel=0.15)


# -- colour ----------------------------------------------------------------------------------------------
def _stronger_stain(img: np.ndarray, k: float) -> np.ndarray:
    """The same cell under a stain k times as dense (Beer-Lambert: OD scales by k)."""
    od = -np.log10((img.astype(np.float64) + 1) / 256)
    return np.clip(np.round(256 * 10 ** (-k * od) - 1), 0, 255).astype(np.uint8)


def test_relative_colour_ignores_stain_strength_absolute_does_not():
    cell = _disc((450, 450), (225, 225), 80)
    nuc = _disc((450, 450), (225, 225), 60)
    img = _canvas(cell, inside=(150, 110, 170), nucleus=nuc, nucleus_rgb=(90, 40, 140))
    a, b = (color.compute(build_context(x)) for x in (img, _stronger_stain(img, 1.3)))
    for c in "rgb":
        assert a[f"color_nucleus_od_ratio_{c}"] == pytest.approx(b[f"color_nucleus_od_ratio_{c}"], rel=0.03)
        assert a[f"color_nucleus_od_chroma_diff_{c}"] == pytest.approx(b[f"color_nucleus_od_chroma_diff_{c}"], abs=0.01)
    assert a["color_nucleus_od_ratio_g"] == pytest.approx(np.log10(256 / 41) / np.log10(256 / 111), rel=1e-3)
    ab, bb = (color_absolute.compute(build_context(x)) for x in (img, _stronger_stain(img, 1.3)))
    assert ab["color_absolute_nucleus_mean_g"] > bb["color_absolute_nucleus_mean_g"] + 10


# -- chromatin -------------------------------------------------------------------------------------------
def test_even_chromatin_and_counted_nucleoli():
    mask = _disc((200, 200), (100, 100), 60)
    assert np.allclose(chromatin.radial_distribution(np.ones((200, 200)), mask), 1.0)
    assert np.allclose(chromatin.granularity(np.full((200, 200), 0.3), mask), 0.0)
    cell = _disc((450, 450), (225, 225), 90)
    nuc = _disc((450, 450), (225, 225), 75)
    img = _canvas(cell, inside=(150, 110, 170), nucleus=nuc, nucleus_rgb=(90, 40, 140))
    for cy, cx in ((200, 200), (250, 240), (215, 265)):
        img[_disc((450, 450), (cy, cx), 4)] = (200, 150, 230)  # bright, still saturated: inside the nucleus
    v = chromatin.compute(build_context(img))
    assert v["chromatin_nucleus_nucleoli_count"] == 3 and v["chromatin_nucleus_clump_count"] == 0
    assert v["chromatin_nucleus_nucleoli_area_share"] == pytest.approx(3 * 49 / (np.pi * 72 ** 2), rel=0.25)


# -- the families as feature sets ------------------------------------------------------------------------
def test_dictionary_matches_extractors_and_is_documented():
    infos = feature_dictionary()
    names = [i.name for i in infos]
    assert len(set(names)) == len(names)
    for fam in ("shape", "color", "texture", "chromatin", "color_absolute", "quality"):
        ext = get_extractor(fam, weights_dir="/nowhere", input_size=299)  # deep options are ignored
        assert [i.name for i in feature_dictionary(fam)] == ext.feature_names
    assert all(i.definition and i.unit and i.region and i.name.startswith(i.family + "_") for i in infos)
    assert parse_feature_set("handcrafted") == list(UNION) and "color_absolute" not in UNION
    assert [i.name for i in feature_dictionary("handcrafted")] == HandcraftedExtractor().feature_names
    with pytest.raises(BlastscanError):
        feature_dictionary("nope")
    with pytest.raises(BlastscanError, match="twice"):
        parse_feature_set("handcrafted+shape")


def test_each_family_has_its_own_identity(monkeypatch):
    before = {f: get_extractor(f).identity for f in UNION}
    monkeypatch.setattr(texture, "GLCM_DISTANCES", (1, 3))
    after = {f: get_extractor(f).identity for f in UNION}
    assert after["texture"] != before["texture"]
    assert all(after[f] == before[f] for f in UNION if f != "texture")  # the other caches stay valid
    assert before["shape"].startswith("shape@2-") and before["chromatin"].startswith("chromatin@1-")


def test_families_on_real_cells(real_images):
    exts = [pickle.loads(pickle.dumps(get_extractor(f))) for f in UNION]  # joblib workers get pickled copies
    for ext in exts:
        X = np.vstack([ext.compute(img) for img in real_images])
        assert X.dtype == np.float32 and X.shape == (len(real_images), len(ext.feature_names))
        assert np.isfinite(X).all()
        assert np.array_equal(X[0], ext.compute(real_images[0].copy()))  # deterministic
        assert (X.std(axis=0) > 0).mean() > 0.9, ext.name  # features vary between cells
    shared = HandcraftedExtractor().compute(real_images[0])
    assert np.array_equal(shared, np.concatenate([e.compute(real_images[0]) for e in exts]))


@pytest.mark.slow
def test_features_separate_classes_across_subjects(cnmc_root):
    """Logistic regression on ~200 cells, subject-disjoint folds: clearly above chance."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from blastscan.dataset import load_image

    m = pd.read_csv(cnmc_root / "manifest.csv", dtype={"subject": str})
    capped = m.groupby("subject").head(12)  # at most 12 cells from each subject, ~100 per class
    picked = pd.concat([g.sample(min(len(g), 100), random_state=0) for _, g in capped.groupby("label")])
    assert picked.groupby("label")["subject"].nunique().min() >= 4
    ext = HandcraftedExtractor()
    X, y, groups = [], [], []
    for row in picked.itertuples():
        try:
            X.append(ext.compute(load_image(cnmc_root / row.path)))
        except BlastscanError:
            continue
        y.append(int(row.label == "all"))
        groups.append(row.subject)
    X, y, groups = np.vstack(X), np.array(y), np.array(groups)
    assert len(y) >= 0.95 * len(picked)  # segmentation fails on few real cells
    pred = np.empty_like(y)
    for tr, te in GroupKFold(n_splits=4).split(X, y, groups):
        assert not set(groups[tr]) & set(groups[te])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X[tr], y[tr])
        pred[te] = model.predict(X[te])
    bacc = balanced_accuracy_score(y, pred)
    assert bacc > 0.6, f"balanced accuracy {bacc:.3f}"


def test_size_reuses_the_shape_measurements_of_the_same_cell(monkeypatch):
    from blastscan.features import segmentation
    from blastscan.features.families import shape, size

    img = np.zeros((120, 120, 3), np.uint8)
    yy, xx = np.mgrid[:120, :120]
    cell = (yy - 60) ** 2 + (xx - 60) ** 2 < 45 ** 2
    nucleus = (yy - 60) ** 2 + (xx - 58) ** 2 < 30 ** 2
    img[cell] = (200, 160, 210)
    img[nucleus] = (90, 40, 150)
    ctx = segmentation.build_context(img)
    calls = []
    real = shape._measure
    monkeypatch.setattr(shape, "_measure", lambda c: calls.append(1) or real(c))
    got_shape, got_size = shape.compute(ctx), size.compute(ctx)
    assert len(calls) == 1  # one measurement serves both families
    assert got_size["size_cell_log_area"] == pytest.approx(np.log1p(got_shape["shape_cell_area"]))


def test_family_identities_follow_the_rule_stored_tables_were_keyed_by():
    """Each family's store identity is ``FAMILY@VERSION-`` plus 10 hex of the sha256 of its module's settings
    beside the segmentation's, as before the families were classes: existing feature stores keep working."""
    import hashlib
    import importlib
    import json

    from blastscan.features.handcrafted import families

    assert union() == ["shape", "color", "texture", "chromatin"]  # the handcrafted columns stored models record
    for fam in families():
        mod = importlib.import_module(f"blastscan.features.families.{fam}")
        cfg = {"segmentation": segmentation.config(), mod.FAMILY: mod.config()}
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
        ext = get_extractor(fam)
        assert ext.identity == f"{mod.FAMILY}@{mod.VERSION}-{digest}"
        assert ext.feature_names == mod.FEATURE_NAMES
        assert type(pickle.loads(pickle.dumps(ext))).__module__ == mod.__name__  # workers import it by its path


def test_a_new_family_is_one_registered_class_and_joins_the_union_in_its_order(real_images):
    from blastscan.features.base import EXTRACTORS, FeatureInfo
    from blastscan.features.handcrafted import FAMILIES, FamilyExtractor, families, register_family

    before = union()

    @register_family
    class NucleusAreaExtractor(FamilyExtractor):
        name, version = "nucleus_area", "1"
        features = [FeatureInfo("nucleus_area_px", "nucleus_area", "nucleus pixels", "px^2", "nucleus")]
        order, in_union = 35, True  # between texture and chromatin

        def measure(self, ctx):
            return {"nucleus_area_px": float(ctx.nucleus.sum())}

        def family_config(self):
            return {}

    try:
        assert union() == before[:3] + ["nucleus_area"] + before[3:]
        assert parse_feature_set("handcrafted") == union() and "nucleus_area" in families()
        assert [i.name for i in feature_dictionary("nucleus_area")] == ["nucleus_area_px"]
        ext = get_extractor("nucleus_area")
        ctx = build_context(real_images[0])
        assert ext.compute(real_images[0])[0] == ctx.nucleus.sum() > 0
        with pytest.raises(ValueError, match="registered twice"):  # a second module claiming the name
            register_family(type("Other", (NucleusAreaExtractor,), {}))
    finally:
        FAMILIES.remove("nucleus_area")
        EXTRACTORS.remove("nucleus_area")
    assert union() == before
