"""Handcrafted features: closed-form shapes, an independent GLCM implementation, real cells."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from blastscan.errors import BlastscanError
from blastscan.features import morphology, texture
from blastscan.features.handcrafted import HandcraftedExtractor, feature_dictionary
from blastscan.features.segmentation import build_context, segment


def _canvas(mask: np.ndarray, inside=(200, 60, 150), nucleus=None, nucleus_rgb=(60, 20, 120)) -> np.ndarray:
    img = np.zeros(mask.shape + (3,), np.uint8)
    img[mask] = inside
    if nucleus is not None:
        img[nucleus] = nucleus_rgb
    return img


def _disc(shape, centre, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def _shape(values: dict, region: str, q: str) -> float:
    return values[f"shape_{region}_{q}"]


def test_disc_shape_matches_closed_form():
    r = 80
    cell = _disc((450, 450), (225, 225), r)
    nuc = _disc((450, 450), (225, 225), 50)
    ctx = build_context(_canvas(cell, nucleus=nuc))
    assert ctx.nucleus.sum() == pytest.approx(nuc.sum(), rel=0.02)
    v = morphology.compute(ctx)
    assert _shape(v, "cell", "area") == pytest.approx(np.pi * r * r, rel=0.01)
    assert _shape(v, "cell", "perimeter") == pytest.approx(2 * np.pi * r, rel=0.02)
    assert _shape(v, "cell", "circularity") == pytest.approx(1.0, abs=0.03)
    assert _shape(v, "cell", "eccentricity") == pytest.approx(0.0, abs=0.05)
    assert _shape(v, "cell", "solidity") == pytest.approx(1.0, abs=0.01)
    assert _shape(v, "cell", "feret_max") == pytest.approx(2 * r, rel=0.02)
    assert _shape(v, "cell", "feret_min") == pytest.approx(2 * r, rel=0.02)
    assert _shape(v, "cell", "radial_irregularity") < 0.01
    assert v["shape_nc_ratio"] == pytest.approx((50 / r) ** 2, rel=0.03)
    assert v["shape_nucleus_offset"] == pytest.approx(0.0, abs=0.01)


def test_rectangle_feret_and_axes():
    h, w = 60, 160
    mask = np.zeros((450, 450), bool)
    mask[100:100 + h, 120:120 + w] = True
    nuc = np.zeros_like(mask)
    nuc[110:150, 140:200] = True
    v = morphology.compute(build_context(_canvas(mask, nucleus=nuc)))
    assert _shape(v, "cell", "area") == h * w
    assert _shape(v, "cell", "feret_max") == pytest.approx(np.hypot(h, w), rel=0.01)
    assert _shape(v, "cell", "feret_min") == pytest.approx(h, rel=0.01)
    assert _shape(v, "cell", "extent") == pytest.approx(1.0)
    # Second-moment ellipse of a rectangle: axes = sqrt(12)·side / sqrt(... ) -> ratio = w/h.
    assert _shape(v, "cell", "aspect_ratio") == pytest.approx(w / h, rel=0.02)
    assert _shape(v, "cell", "circularity") < 0.75


def test_irregular_outline_lowers_solidity_and_raises_irregularity():
    disc = _disc((450, 450), (225, 225), 90)
    star = disc.copy()
    yy, xx = np.mgrid[:450, :450]
    star &= np.cos(8 * np.arctan2(yy - 225, xx - 225)) * 25 + 65 >= np.hypot(yy - 225, xx - 225)
    nuc = _disc((450, 450), (225, 225), 40)
    smooth = morphology.compute(build_context(_canvas(disc, nucleus=nuc)))
    rough = morphology.compute(build_context(_canvas(star, nucleus=nuc)))
    assert _shape(rough, "cell", "solidity") < _shape(smooth, "cell", "solidity") - 0.1
    assert _shape(rough, "cell", "radial_irregularity") > 5 * _shape(smooth, "cell", "radial_irregularity")


def test_glcm_of_constant_region_and_checkerboard():
    const = np.zeros((40, 40), np.uint8)
    const[5:35, 5:35] = 7
    p = texture.glcm_properties(const, 64)
    assert np.allclose(p["contrast"], 0) and np.allclose(p["homogeneity"], 1) and np.allclose(p["asm"], 1)
    assert np.allclose(p["correlation"], 1) and np.allclose(p["entropy"], 0)  # documented degenerate value
    checker = np.where((np.indices((40, 40)).sum(0) % 2) == 0, 1, 3).astype(np.uint8)
    p = texture.glcm_properties(checker, 4, distances=(1,), angles=(0.0,))
    assert p["contrast"][0, 0] == pytest.approx(4.0)  # every horizontal neighbour differs by 2
    assert p["correlation"][0, 0] == pytest.approx(-1.0)


def test_glcm_ignores_background():
    """Pairs with a background (0) pixel must not count: a constant cell on black has zero contrast."""
    img = np.zeros((60, 60), np.uint8)
    img[10:50, 10:50] = 40
    assert np.allclose(texture.glcm_properties(img, 64)["contrast"], 0)


@pytest.mark.parametrize("case, why", [
    ("black", "black"), ("tiny", "too small"), ("border", "border"),
])
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
        HandcraftedExtractor().compute(img)


def test_no_nucleus_fails():
    """A uniform cell has no darker part: Otsu finds no plausible nucleus once cleaned."""
    img = _canvas(_disc((450, 450), (225, 225), 80), inside=(120, 60, 140))
    with pytest.raises(BlastscanError, match="nucleus"):
        segment(img)


def test_dictionary_matches_extractor_and_is_documented():
    ext = HandcraftedExtractor(weights_dir="/nowhere", input_size=299)  # deep options are ignored
    infos = feature_dictionary()
    assert [i.name for i in infos] == ext.feature_names
    assert len(ext.feature_names) >= 100 and len(set(ext.feature_names)) == len(ext.feature_names)
    assert {i.family for i in infos} == {"shape", "color", "texture"}
    assert all(i.definition and i.unit and i.name.startswith(i.family + "_") for i in infos)
    assert len(feature_dictionary("texture")) < len(infos)
    with pytest.raises(BlastscanError):
        feature_dictionary("nope")


@pytest.fixture(scope="module")
def real_images(real_cell_paths):
    from blastscan.dataset import load_image

    return [load_image(p) for p in real_cell_paths]


def test_glcm_agrees_with_mahotas(real_images):
    mahotas = pytest.importorskip("mahotas")
    for img in real_images[:4]:
        ctx = build_context(img)
        ours = texture.glcm_properties(ctx.levels, ctx.n_levels, distances=(1,))
        # mahotas: symmetric GLCM over the same 4 directions at distance 1; ignore_zeros drops pairs with
        # the background (level 0), as we do. Its columns: 0 ASM, 1 contrast, 2 correlation, 4 IDM, 8 entropy.
        ref = mahotas.features.haralick(ctx.levels, ignore_zeros=True, distance=1, return_mean=True)
        assert ours["asm"].mean() == pytest.approx(ref[0], rel=1e-6)
        assert ours["contrast"].mean() == pytest.approx(ref[1], rel=1e-6)
        assert ours["correlation"].mean() == pytest.approx(ref[2], rel=1e-6)
        assert ours["homogeneity"].mean() == pytest.approx(ref[4], rel=1e-6)
        assert ours["entropy"].mean() == pytest.approx(ref[8], rel=1e-6)


def test_extractor_on_real_cells(real_images):
    ext = pickle.loads(pickle.dumps(HandcraftedExtractor()))  # joblib workers get a pickled copy
    X = np.vstack([ext.compute(img) for img in real_images])
    assert X.dtype == np.float32 and X.shape == (len(real_images), len(ext.feature_names))
    assert np.isfinite(X).all()
    assert np.array_equal(X[0], ext.compute(real_images[0].copy()))  # deterministic
    assert (X.std(axis=0) > 0).sum() > 0.9 * X.shape[1]  # features vary between cells
    assert ext.config()["grey_levels"] == 64 and ext.identity.startswith("handcrafted@1-")


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
    # At most 12 cells from each subject, so no subject dominates; ~100 per class.
    capped = m.groupby("subject").head(12)
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
