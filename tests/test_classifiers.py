"""Classifier families: API contract, grouped inner splits, persistence, reproducibility (synthetic data)."""

from __future__ import annotations

import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from blastscan.classifiers import (available_classifiers, classifier_defaults, describe_classifier, fit_classifier,
                                   get_classifier, predict_p_all)
from blastscan.classifiers.base import inner_folds
from blastscan.classifiers.svm import GroupCalibratedSVC, platt_fit
from blastscan.classifiers.svm_pca import PCASVC
from blastscan.classifiers.xgb import BalancedXGBClassifier
from blastscan.errors import BlastscanError

FAMILIES = ["logreg", "svm", "xgboost", "fcn", "fcn_svm"]
# small and fast: a tiny FCN is enough to show the plumbing works
SMALL = {"fcn": {"hidden": 16, "epochs": 15, "lr": 0.01}, "fcn_svm": {"hidden": 16, "epochs": 15, "lr": 0.01},
         "xgboost": {"n_estimators": 30}}


def subjects_data(n_groups=24, per_group=12, d=20, seed=0, class_sep=1.5):
    """Separable data where, as in C-NMC, every group (subject) holds one class."""
    X, y = make_classification(n_groups * per_group, d, n_informative=6, class_sep=class_sep, flip_y=0,
                               random_state=seed)
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]
    groups = np.array([f"s{i}" for i in np.arange(len(y)) // per_group])
    assert all(len(set(y[groups == g])) == 1 for g in set(groups))
    return X, y, groups


def split_by_group(groups, test_share=0.25, seed=0):
    names = np.unique(groups)
    test = np.random.default_rng(seed).choice(names, int(len(names) * test_share), replace=False)
    is_test = np.isin(groups, test)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def test_available_classifiers_lists_the_five_families():
    assert set(FAMILIES) <= set(available_classifiers())


def test_import_loads_neither_tensorflow_nor_xgboost():
    code = ("import sys, blastscan.classifiers as c; c.available_classifiers(); "
            "[c.get_classifier(n) for n in c.available_classifiers()]; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'xgboost') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", FAMILIES)
def test_fit_predict_reproducible_and_roundtrip(name, tmp_path):
    X, y, groups = subjects_data()
    tr, te = split_by_group(groups)
    est = fit_classifier(get_classifier(name, random_state=3, **SMALL.get(name, {})), X[tr], y[tr], groups[tr])
    proba = est.predict_proba(X[te])
    assert proba.shape == (len(te), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(est.classes_) == [0, 1]
    assert roc_auc_score(y[te], proba[:, 1]) > 0.8  # unseen subjects, clearly better than chance
    assert set(est.predict(X[te])) <= {0, 1}

    again = fit_classifier(get_classifier(name, random_state=3, **SMALL.get(name, {})), X[tr], y[tr], groups[tr])
    np.testing.assert_allclose(again.predict_proba(X[te]), proba, rtol=0, atol=1e-12)

    joblib.dump(est, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_allclose(loaded.predict_proba(X[te]), proba, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["svm", "xgboost", "fcn"])
def test_seed_changes_the_model(name):
    X, y, groups = subjects_data(seed=1)
    p = [fit_classifier(get_classifier(name, random_state=s, **SMALL.get(name, {})), X, y, groups).predict_proba(X)
         for s in (0, 1)]
    assert not np.allclose(p[0], p[1])


def test_saved_fcn_predicts_without_tensorflow(tmp_path):
    X, y, groups = subjects_data()
    est = fit_classifier(get_classifier("fcn", **SMALL["fcn"]), X, y, groups)
    joblib.dump(est, tmp_path / "fcn.joblib")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "p.npy", est.predict_proba(X))
    code = ("import sys, joblib, numpy as np; d = sys.argv[1]; m = joblib.load(d + '/fcn.joblib'); "
            "assert np.array_equal(m.predict_proba(np.load(d + '/X.npy')), np.load(d + '/p.npy')); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- errors ------------------------------------------------------------------------------------
def test_unknown_classifier_lists_choices():
    with pytest.raises(BlastscanError, match="choose from: .*svm") as err:
        get_classifier("random_forest")
    assert err.value.what == "classifier 'random_forest'"


@pytest.mark.parametrize("name, params, message", [
    ("svm", {"kernel": "linear"}, "unknown parameter 'kernel'; valid: C, gamma"),
    ("svm", {"C": -1}, "C=-1 is invalid"),
    ("svm", {"gamma": "wide"}, "'scale' or 'auto' or a number"),
    ("xgboost", {"max_depth": 0}, "max_depth=0"),
    ("xgboost", {"n_estimators": 2.5}, "an integer"),
    ("fcn", {"dropout": 1.5}, "dropout=1.5"),
    ("fcn", {"hidden": True}, "hidden=True"),
    ("logreg", {"class_weight": "even"}, "class_weight='even'"),
    ("fcn_svm", {"calibration": "platt"}, "'sigmoid' or 'isotonic'"),
])
def test_bad_parameters_raise_blastscan_error(name, params, message):
    with pytest.raises(BlastscanError, match=message.replace("(", r"\(")) as err:
        get_classifier(name, **params)
    assert err.value.what == f"classifier '{name}'"


def test_bad_random_state_is_refused():
    with pytest.raises(BlastscanError, match="random_state"):
        get_classifier("svm", random_state="zero")


def test_predict_p_all_is_float64_p_of_class_1_for_float32_and_float64_rows():
    # compare's out-of-fold P(ALL) and a bundle's scores go through this one function
    X, y, groups = subjects_data()
    est = fit_classifier(get_classifier("logreg"), X, y, groups)
    p32, p64 = predict_p_all(est, X.astype(np.float32)), predict_p_all(est, X)
    assert p32.dtype == p64.dtype == np.float64
    np.testing.assert_array_equal(p32, predict_p_all(est, X.astype(np.float32).astype(np.float64)))
    np.testing.assert_allclose(p64, est.predict_proba(X)[:, list(est.classes_).index(1)])
    assert roc_auc_score(y, p64) > 0.9


def test_integer_parameters_from_the_command_line_become_ints():
    est = get_classifier("xgboost", n_estimators=40.0)
    assert est.get_params()["model__n_estimators"] == 40
    assert isinstance(est.get_params()["model__n_estimators"], int)


@pytest.mark.parametrize("name", FAMILIES)
def test_describe_and_overrides(name):
    line = describe_classifier(name)
    assert "\n" not in line and line.startswith(f"{name}: ")
    defaults = classifier_defaults(name)
    assert all(f"{k}=" in line for k in defaults)
    key, value = next(iter(defaults.items()))
    new = value * 2 if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    est = get_classifier(name, random_state=5, **({key: new} if new is not None else {}))
    params = est.get_params()
    if new is not None:
        assert params[f"model__{key}"] == new
    assert params["model__random_state"] == 5
    copy = clone(est)
    assert copy is not est and copy.get_params().keys() == params.keys()
    assert all(repr(copy.get_params()[k]) == repr(params[k]) for k in params if "__" in k)
    assert get_classifier(name) is not get_classifier(name)  # always a fresh estimator


# ---- subject-disjoint inner splits -------------------------------------------------------------
def _assert_group_disjoint(folds, groups, n):
    covered = np.zeros(n, dtype=int)
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        covered[te] += 1
    assert np.all(covered == 1)  # every row scored out-of-fold exactly once


def test_svm_calibration_folds_are_group_disjoint():
    X, y, groups = subjects_data(seed=2)
    est = fit_classifier(get_classifier("svm", inner_splits=4), X, y, groups)
    svm = est[-1]
    assert svm.calibration_grouped_ and "group-disjoint" in svm.calibration_note_
    assert len(svm.calibration_folds_) == 4
    _assert_group_disjoint(svm.calibration_folds_, groups, len(y))


def test_svm_without_groups_says_it_is_per_sample():
    X, y, _ = subjects_data(seed=2)
    svm = fit_classifier(get_classifier("svm"), X, y)[-1]
    assert not svm.calibration_grouped_
    assert svm.calibration_note_.startswith("per-sample") and "no groups given" in svm.calibration_note_


def test_grouped_calibration_is_less_confident_than_leaky_calibration():
    # Each subject has a strong signature of its own and the class signal is weak: per-sample inner folds
    # let the SVM recognise subjects and calibrate overconfidently; subject-grouped folds do not.
    rng = np.random.default_rng(0)
    n_groups, per_group, d = 30, 15, 20
    groups = np.repeat([f"s{i}" for i in range(n_groups)], per_group)
    y = np.repeat(np.arange(n_groups) % 2, per_group)
    X = (np.repeat(rng.normal(0, 2.0, (n_groups, d)), per_group, axis=0) + rng.normal(0, 0.5, (len(y), d))
         + 0.3 * y[:, None])
    grouped = GroupCalibratedSVC().fit(X, y, groups=groups)
    leaky = GroupCalibratedSVC().fit(X, y)
    assert abs(grouped.calibrator_[0]) < 0.5 * abs(leaky.calibrator_[0])


def test_fcn_early_stopping_holds_out_whole_subjects():
    X, y, groups = subjects_data(seed=3)
    fcn = fit_classifier(get_classifier("fcn", **SMALL["fcn"]), X, y, groups)[-1]
    val = np.zeros(len(y), bool)
    val[fcn.validation_idx_] = True
    assert not set(groups[val]) & set(groups[~val])
    assert set(y[val]) == {0, 1} and 1 <= fcn.best_epoch_ <= fcn.n_epochs_ <= 15
    assert fcn.hidden_activations(X[:5]).shape == (5, 16)


def test_fcn_svm_passes_groups_to_both_parts():
    X, y, groups = subjects_data(seed=4)
    model = fit_classifier(get_classifier("fcn_svm", **SMALL["fcn_svm"]), X, y, groups)[-1]
    assert "group-disjoint" in model.fcn_.early_stopping_note_ and "group-disjoint" in model.split_note_
    held = model.svm_rows_
    _assert_group_disjoint(model.svm_.calibration_folds_, np.asarray(groups)[held], len(held))
    # the SVM learns from activations of subjects the FCN never saw
    fcn_groups = set(np.asarray(groups)[np.setdiff1d(np.arange(len(y)), held)])
    assert fcn_groups and not fcn_groups & set(np.asarray(groups)[held])


def test_inner_folds_fall_back_when_a_class_has_one_subject():
    y = np.repeat([0, 1, 1, 1], 10)
    groups = np.repeat(["h1", "a1", "a2", "a3"], 10)  # a single HEM subject: no grouped split keeps both classes
    folds, note = inner_folds(y, groups, 3, seed=0)
    assert note.startswith("per-sample") and "allow no split" in note
    assert all(set(y[tr]) == {0, 1} for tr, _ in folds)


def test_fit_classifier_fits_estimators_without_groups_parameter():
    from sklearn.linear_model import LogisticRegression

    X, y, groups = subjects_data()
    est = fit_classifier(LogisticRegression(), X, y, groups)
    assert est.predict_proba(X).shape == (len(y), 2)


def test_xgboost_balances_classes_at_fit_time():
    X, y, groups = subjects_data()
    keep = np.concatenate([np.flatnonzero(y == 0)[:40], np.flatnonzero(y == 1)])
    model = fit_classifier(get_classifier("xgboost", **SMALL["xgboost"]), X[keep], y[keep], groups[keep])[-1]
    assert model.scale_pos_weight_ == pytest.approx(40 / (y == 1).sum())


def test_platt_fit_recovers_a_known_sigmoid():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 20000)
    y = (rng.random(len(s)) < 1 / (1 + np.exp(-1.5 * s + 0.5))).astype(int)  # a = -1.5, b = 0.5
    a, b = platt_fit(s, y)
    assert a == pytest.approx(-1.5, abs=0.1) and b == pytest.approx(0.5, abs=0.1)


# scikit-learn's own conformance suite for our fast estimators (the Keras ones take minutes under it).
@parametrize_with_checks(
    [GroupCalibratedSVC(), PCASVC(n_components=2), BalancedXGBClassifier(n_estimators=5)],
    expected_failed_checks=lambda est: ({"check_class_weight_classifiers": "class_weight is 'balanced' or None"}
                                        if isinstance(est, (GroupCalibratedSVC, PCASVC)) else {}),
)
def test_sklearn_conformance(estimator, check):
    check(estimator)
