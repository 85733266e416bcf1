"""Every classifier family written as an ONNX graph gives the fitted estimator's P(ALL) to 1e-5 on real cells
(the size and shape features of the package sample), and the same calls except within 1e-5 of the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from blastscan.classifiers import available_classifiers, fit_classifier, get_classifier
from blastscan.dataset import build_manifest, labelled
from blastscan.features.featureset import FeatureSet
from blastscan.bundle.onnx_model import NotWritable, OnnxModel, to_onnx

SMALL = {"fcn": {"hidden": 16, "epochs": 15, "patience": 3}, "fcn_svm": {"hidden": 16, "epochs": 15, "patience": 3},
         "xgboost": {"n_estimators": 40}, "svm_pca": {"n_components": 8}}


@pytest.fixture(scope="module")
def real(sample_root, tmp_path_factory) -> dict:
    """size+shape features of the sample's labelled cells (real C-NMC cells of 34 subjects)."""
    store = tmp_path_factory.mktemp("store")
    rows = labelled(build_manifest(sample_root).df)
    fs = FeatureSet("size+shape", {})
    fs.ensure(rows, store, jobs=1, progress=False)
    fm = fs.read(rows, store)
    y = (fm.rows["label"].astype(str).to_numpy() == "all").astype(int)
    return {"X": fm.X.astype(np.float64), "y": y, "groups": fm.rows["subject"].astype(str).to_numpy(),
            "n_size": sum(n.startswith("size") or n.startswith("log") for n in fm.feature_names)}


def _check(est, X, threshold=0.5):
    expected = est.predict_proba(X)[:, list(est.classes_).index(1)]
    got = OnnxModel(to_onnx(est, X.shape[1]).SerializeToString()).predict_proba(X)[:, 1]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    near = np.abs(expected - threshold) <= 1e-5
    assert ((got >= threshold) == (expected >= threshold))[~near].all()
    return got, expected


@pytest.mark.parametrize("name", ["logreg", "svm", "svm_pca", "xgboost", "fcn", "fcn_svm"])
def test_each_family_matches_the_fitted_estimator(real, name):
    X, y, groups = real["X"], real["y"], real["groups"]
    train = np.arange(len(y)) % 3 != 0  # scored rows the model did not see, too
    est = fit_classifier(get_classifier(name, random_state=0, **SMALL.get(name, {})), X[train], y[train], groups[train])
    got, expected = _check(est, X)
    assert expected.std() > 0.01  # a model that says the same for every cell would prove nothing
    if name in ("logreg", "svm", "svm_pca"):  # float64 throughout: agreement far below float32 rounding
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_isotonic_calibration_matches(real):
    X, y, groups = real["X"], real["y"], real["groups"]
    est = fit_classifier(get_classifier("svm", calibration="isotonic"), X, y, groups)
    _check(est, X)


def test_vote_matches(real):
    X, y, groups = real["X"], real["y"], real["groups"]
    d = X.shape[1]
    members = [{"classifier": "logreg", "params": {}, "columns": [[0, 12]]},
               {"classifier": "svm_pca", "params": {"n_components": 6}, "columns": [[12, d]]},
               {"classifier": "xgboost", "params": {"n_estimators": 20}, "columns": [[0, d]]}]
    est = fit_classifier(get_classifier("vote", members=members), X, y, groups)
    _check(est, X)


def test_tuned_model_matches(real):
    from blastscan.evaluation.tuning import Tuned

    X, y, groups = real["X"], real["y"], real["groups"]
    est = fit_classifier(Tuned(classifier="logreg", grid=[{"C": 0.1}, {"C": 1.0}]), X, y, groups)
    _check(est, X)


def test_every_registered_family_has_a_writer():
    from blastscan.bundle.onnx_model import _CLASSIFIERS

    for name in available_classifiers():
        final = get_classifier(name).steps[-1][1]
        assert type(final).__name__ in _CLASSIFIERS, name


def test_a_family_without_writer_says_so():
    from sklearn.neighbors import KNeighborsClassifier

    est = KNeighborsClassifier(3).fit(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2)
    with pytest.raises(NotWritable, match="KNeighborsClassifier"):
        to_onnx(est, 3)
