"""Patient-level results and soft votes: blast fraction correction, within-subject scoring, subject AUC,
and a vote that is exactly the mean of its members."""

from __future__ import annotations

import numpy as np
import pytest

from blastscan.classifiers import fit_classifier, get_classifier
from blastscan.evaluation.patient import blast_fraction, patient_metrics, subject_means, within_subject
from blastscan.errors import BlastscanError
from blastscan.pipelines.compare import default_ensembles, parse_ensembles


def test_blast_fraction_inverts_known_error_rates():
    # 60% blasts, tpr 0.9, fpr 0.2: expected share called ALL = 0.6*0.9 + 0.4*0.2 = 0.62
    est, lo, hi = blast_fraction(620, 1000, recall=0.9, specificity=0.8)
    assert est == pytest.approx(0.6)
    assert lo < est < hi and hi - lo < 0.1
    # a tiny batch gets a wide interval; the estimate is clipped into [0, 1]
    est, lo, hi = blast_fraction(0, 5, recall=0.9, specificity=0.8)
    assert est == 0.0 and lo == 0.0 and hi > 0.3
    # without usable rates: the plain share with its Wilson interval
    assert blast_fraction(3, 10, None, None)[0] == pytest.approx(0.3)
    assert np.isnan(blast_fraction(0, 0, 0.9, 0.8)[0])


def test_within_subject_pulls_cells_to_their_subjects_mean():
    p = np.array([0.2, 0.6, 1.0, 0.5])
    s = np.array(["a", "a", "a", "b"])
    np.testing.assert_allclose(within_subject(p, s), [0.4, 0.6, 0.8, 0.5])


def test_patient_metrics_rank_subjects_by_mean_probability():
    subjects = np.repeat(["A1", "A2", "A3", "H1", "H2", "H3"], 4)
    y = np.repeat([1, 1, 1, 0, 0, 0], 4)
    p = np.repeat([0.9, 0.7, 0.4, 0.3, 0.5, 0.1], 4)  # A3 below H2: 8 of 9 ALL-HEM pairs ordered right
    m = patient_metrics(subjects, y, p, 0.5, n_boot=200, seed=0)
    assert m["subject_roc_auc"] == pytest.approx(8 / 9)
    assert m["subject_call_accuracy"] == pytest.approx(4 / 6)  # A3 called HEM, H2 called ALL (p >= 0.5)
    assert m["subject_roc_auc_ci_low"] <= m["subject_roc_auc"] <= m["subject_roc_auc_ci_high"]
    t = subject_means(subjects, y, p, 0.5).set_index("subject")
    assert t.loc["H2", "fraction_called_all"] == 1.0 and t.loc["A3", "label"] == "all"


def test_vote_is_the_mean_of_its_members_fitted_alone():
    from sklearn.datasets import make_classification

    X, y = make_classification(240, 16, random_state=1)
    groups = np.arange(240) // 8
    members = [{"classifier": "logreg", "params": {"C": 0.5}, "columns": [[0, 6]]},
               {"classifier": "svm_pca", "params": {"n_components": 4}, "columns": [[6, 16]]}]
    vote = fit_classifier(get_classifier("vote", random_state=3, members=members), X, y, groups=groups)
    a = fit_classifier(get_classifier("logreg", random_state=3, C=0.5), X[:, :6], y, groups=groups)
    b = fit_classifier(get_classifier("svm_pca", random_state=3, n_components=4), X[:, 6:], y, groups=groups)
    expected = (a.predict_proba(X[:, :6])[:, 1] + b.predict_proba(X[:, 6:])[:, 1]) / 2
    np.testing.assert_allclose(vote.predict_proba(X)[:, 1], expected, rtol=1e-12)


def test_vote_refuses_columns_outside_the_matrix():
    members = [{"classifier": "logreg", "params": {}, "columns": [[0, 50]]},
               {"classifier": "logreg", "params": {}, "columns": [[0, 2]]}]
    with pytest.raises(ValueError, match="do not fit"):
        get_classifier("vote", members=members).fit(np.zeros((20, 4)) + np.arange(20)[:, None], [0, 1] * 10)


def test_ensemble_specs_parse_and_defaults_follow_the_compared_sets():
    assert parse_ensembles("a/svm+b/logreg; c/x+d/y") == [[("a", "svm"), ("b", "logreg")], [("c", "x"), ("d", "y")]]
    with pytest.raises(BlastscanError, match="two members"):
        parse_ensembles("a/svm")
    with pytest.raises(BlastscanError, match="FEATURE_SET/CLASSIFIER"):
        parse_ensembles("a+b")
    assert default_ensembles("handcrafted") == []
    assert default_ensembles("size,inception_v3") == ["inception_v3/svm_pca+size/logreg"]
