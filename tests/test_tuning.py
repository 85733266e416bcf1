"""Grouped tuning: the search scores candidates on subject-grouped inner folds of the training data only,
refits the best, and records what it chose."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from blastscan.classifiers import fit_classifier
from blastscan.errors import BlastscanError
from blastscan.evaluation.tuning import GRIDS, Tuned, grid_for


def _data(seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(30), 10)
    y = (groups % 2).astype(int)  # each group one class
    X = rng.normal(size=(300, 6))
    X[:, 0] += 1.5 * y  # one informative column
    return X, y, groups


def test_tuned_picks_the_candidate_with_the_best_inner_auc_and_refits_it():
    X, y, groups = _data()
    grid = [{"C": 1e-6}, {"C": 1.0}]  # C=1e-6 shrinks logreg to a constant: chance AUC on inner folds
    est = fit_classifier(Tuned(classifier="logreg", grid=grid, random_state=0), X, y, groups=groups)
    scores = dict((c["C"], s) for c, s in est.scores_)
    assert est.best_params_ == {"C": 1.0} and scores[1.0] > scores[1e-6]
    assert "group-disjoint" in est.search_note_  # inner folds never split a group
    assert est.model_.get_params()["model__C"] == 1.0
    p = est.predict_proba(X)[:, 1]
    assert p[y == 1].mean() > p[y == 0].mean()


def test_tuned_inside_a_cv_depends_on_the_training_part_only():
    # the outer test rows are changed wildly: what the search chose on the training part cannot change
    X, y, groups = _data(1)
    train = groups < 20
    grid = [{"C": 0.001}, {"C": 1.0}]
    a = fit_classifier(Tuned(classifier="logreg", grid=grid), X[train], y[train], groups=groups[train])
    X2 = X.copy()
    X2[~train] = -X2[~train] * 100
    b = fit_classifier(Tuned(classifier="logreg", grid=grid), X2[train], y[train], groups=groups[train])
    assert a.best_params_ == b.best_params_ and a.scores_ == b.scores_


def test_grid_for_lists_candidates_of_known_parameters_only():
    assert grid_for("logreg") == [{"C": c} for c in (0.001, 0.01, 0.1, 1.0)]
    assert len(grid_for("svm_pca")) == 6
    assert grid_for("vote") == [{}]  # nothing to tune
    with pytest.raises(Exception):
        grid_for("nosuch")


def test_a_grid_key_the_classifier_lacks_is_an_error(monkeypatch):
    assert all(set(GRIDS[name]) <= set(grid_for(name)[0]) for name in GRIDS)  # the shipped grids are valid
    monkeypatch.setitem(GRIDS, "fcn", {**GRIDS["fcn"], "weight_decay": [0.0, 1e-4]})
    with pytest.raises(BlastscanError, match="unknown parameter 'weight_decay'"):
        grid_for("fcn")
    X, y, groups = _data()
    with pytest.raises(BlastscanError, match="unknown parameter 'gamma'"):  # a caller's grid too, before any fit
        fit_classifier(Tuned(classifier="logreg", grid=[{"C": 1.0}, {"gamma": 1.0}]), X, y, groups=groups)


@pytest.mark.slow  # GridSearchCV fits in each of scikit-learn's ~50 checks
@parametrize_with_checks([Tuned(classifier="logreg", grid=[{"C": 0.1}, {"C": 1.0}])])
def test_sklearn_conformance(estimator, check):
    check(estimator)
