"""Subject-disjoint evaluation: folds never split a group, thresholds never see test folds, metrics agree
with scikit-learn, and the subject bootstrap is seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

from blastscan.errors import BlastscanError
from blastscan import evaluation as ev
from blastscan.evaluation import metrics as ev_metrics


def _layout(sizes, labels):
    """Cells of subjects: ``sizes[i]`` cells of class ``labels[i]`` for subject ``s<i>``."""
    groups = np.concatenate([[f"s{i}"] * n for i, n in enumerate(sizes)])
    y = np.concatenate([[lab] * n for n, lab in zip(sizes, labels)]).astype(int)
    return groups, y


# ---------------------------------------------------------------------------------------------------
# folds
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 1)), min_size=4, max_size=30),
    st.integers(2, 8),
    st.integers(0, 2**16),
)
def test_subject_folds_never_share_a_group_and_test_every_cell_once(subjects, n_splits, seed):
    sizes = [n for n, _ in subjects]
    labels = [lab for _, lab in subjects]
    groups, y = _layout(sizes, labels)
    per_class = {c: sum(1 for lab in labels if lab == c) for c in (0, 1)}
    if min(per_class.values()) < 2:
        with pytest.raises(BlastscanError):
            ev.plan_subject_folds(groups, y, n_splits=n_splits, seed=seed)
        return
    plan = ev.plan_subject_folds(groups, y, n_splits=n_splits, seed=seed)
    assert 2 <= plan.n_splits <= min(n_splits, per_class[0], per_class[1])
    tested = np.concatenate([te for _, te in plan.folds])
    assert sorted(tested.tolist()) == list(range(len(y)))  # every cell tested exactly once
    for tr, te in plan.folds:
        assert set(groups[tr]).isdisjoint(groups[te])
        assert len(tr) + len(te) == len(y)
        assert len(np.unique(y[tr])) == 2  # a model can always be trained
    for i, (_, te) in enumerate(plan.folds):
        assert (i in plan.one_class_folds) == (len(np.unique(y[te])) == 1)


def test_folds_are_reduced_to_the_minority_subjects_and_say_so():
    groups, y = _layout([30, 20, 25, 10, 12, 40, 5, 8], [1, 1, 1, 1, 1, 0, 0, 0])  # 3 HEM subjects
    plan = ev.plan_subject_folds(groups, y, n_splits=5, seed=0)
    assert plan.n_splits == 3 and plan.n_splits_requested == 5
    assert any("only 3 HEM" in note for note in plan.notes)
    assert ev.subject_folds(groups, y, 5, 0)[0][1].tolist() == plan.folds[0][1].tolist()  # same, deterministic


def test_one_subject_of_a_class_cannot_be_split():
    groups, y = _layout([30, 20, 40], [1, 1, 0])
    with pytest.raises(BlastscanError, match="at least 2 subjects"):
        ev.subject_folds(groups, y, 5, 0)


def test_leaky_folds_do_put_one_subject_on_both_sides():
    groups, y = _layout([50, 60, 40, 45], [1, 1, 0, 0])
    shared = [set(groups[tr]) & set(groups[te]) for tr, te in ev.leaky_folds(y, 3, seed=0)]
    assert all(shared)


# ---------------------------------------------------------------------------------------------------
# metrics
def test_compute_metrics_matches_sklearn_on_random_inputs_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        p = np.round(np.clip(rng.normal(0.4 + 0.3 * y, 0.25), 0, 1), 2)  # rounded: many ties
        thr = float(rng.uniform(0.3, 0.7))
        pred = (p >= thr).astype(int)
        m = ev.compute_metrics(y, p, thr)
        assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
        assert m["f1_all"] == pytest.approx(f1_score(y, pred, pos_label=1))
        assert m["f1_hem"] == pytest.approx(f1_score(y, pred, pos_label=0))
        assert m["recall_all"] == pytest.approx(recall_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
        tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)


def test_specificity_and_recall_from_a_confusion_matrix_written_down():
    # 4 ALL cells: 3 called ALL (TP), 1 called HEM (FN); 6 HEM cells: 2 called ALL (FP), 4 called HEM (TN)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.3, 0.1, 0.2, 0.4])
    m = ev.compute_metrics(y, p, 0.5, subjects=list("aabbccddee"))
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["recall_all"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    f1_all, f1_hem = 2 * 3 / (2 * 3 + 2 + 1), 2 * 4 / (2 * 4 + 1 + 2)
    assert m["weighted_f1"] == pytest.approx((4 * f1_all + 6 * f1_hem) / 10)
    assert m["n_subjects"] == 5 and m["n"] == 10


def test_one_class_sample_has_no_roc_auc():
    m = ev.compute_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"]) and np.isnan(m["specificity"])
    assert m["recall_all"] == pytest.approx(2 / 3)


def test_per_cell_thresholds_pool_each_fold_at_its_own_threshold():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    p = rng.random(60)
    thr = np.where(np.arange(60) < 30, 0.3, 0.7)
    pred = np.concatenate([(p[:30] >= 0.3), (p[30:] >= 0.7)]).astype(int)
    assert ev.compute_metrics(y, p, thr)["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))


def test_weighted_metrics_equal_metrics_of_repeated_cells():
    # the bootstrap counts a cell as often as its group was drawn: same as repeating the cell
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    p = np.round(rng.random(80), 1)
    w = rng.integers(0, 4, size=(3, 80)).astype(float)
    pred = (p >= 0.5).astype(int)
    batch = ev_metrics._batch_metrics(y, pred, w, ev_metrics._Scores(p))
    for b in range(3):
        yy, pp = np.repeat(y, w[b].astype(int)), np.repeat(p, w[b].astype(int))
        assert batch["roc_auc"][b] == pytest.approx(roc_auc_score(yy, pp))
        assert batch["pr_auc"][b] == pytest.approx(average_precision_score(yy, pp))
        assert batch["weighted_f1"][b] == pytest.approx(f1_score(yy, (pp >= 0.5).astype(int), average="weighted"))


def test_bootstrap_ci_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(4)
    groups, y = _layout(rng.integers(5, 60, 24), [1] * 14 + [0] * 10)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    point = ev.compute_metrics(y, p, 0.5)
    ci = ev.bootstrap_ci(y, p, 0.5, groups, n_boot=400, seed=7)
    for name in ev.CI_METRICS:
        lo, hi = ci[name]
        assert lo <= point[name] <= hi, name
        assert hi > lo  # subjects differ, so resampling them spreads the metric
    assert ci == ev.bootstrap_ci(y, p, 0.5, groups, n_boot=400, seed=7)
    assert ci != ev.bootstrap_ci(y, p, 0.5, groups, n_boot=400, seed=8)


def test_bootstrap_needs_two_subjects_per_class():
    groups, y = _layout([10, 12, 9], [1, 1, 0])
    ci = ev.bootstrap_ci(y, np.linspace(0, 1, 31), 0.5, groups, n_boot=50)
    assert all(np.isnan(lo) and np.isnan(hi) for lo, hi in ci.values())


# ---------------------------------------------------------------------------------------------------
# thresholds
def test_recall_threshold_is_the_highest_that_reaches_the_target():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.7 + 0.3 * y, 3)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        t = ev.choose_threshold(y, p, "recall", target)
        assert recall_score(y, p >= t) >= target
        higher = np.unique(p[p > t])
        if len(higher):
            assert recall_score(y, p >= higher[0]) < target


def test_f1_threshold_maximises_weighted_f1_by_brute_force():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 150)
    p = np.round(rng.random(150) * 0.6 + 0.3 * y, 2)
    t = ev.choose_threshold(y, p, "f1")
    best = max(f1_score(y, p >= c, average="weighted") for c in np.unique(p))
    assert f1_score(y, p >= t, average="weighted") == pytest.approx(best)


def test_threshold_of_one_class_data_falls_back_to_half():
    assert ev.choose_threshold([1, 1, 1], [0.2, 0.3, 0.9]) == 0.5


# ---------------------------------------------------------------------------------------------------
# no peeking: a spy classifier records which rows it is fitted on and asked about
class Spy(BaseEstimator, ClassifierMixin):
    """Logistic regression on columns 1: that records the row ids (column 0) of every fit and predict."""

    log: list = []

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X, y):
        Spy.log.append(("fit", X[:, 0].astype(int).tolist()))
        self.model_ = LogisticRegression().fit(X[:, 1:], y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        Spy.log.append(("predict", X[:, 0].astype(int).tolist()))
        return self.model_.predict_proba(X[:, 1:])


def _spy_data(seed=0):
    rng = np.random.default_rng(seed)
    groups, y = _layout(rng.integers(5, 30, 16), [1] * 9 + [0] * 7)
    X = np.column_stack([np.arange(len(y)), rng.normal(size=(len(y), 3)) + y[:, None] * 0.8])
    return X, y, groups


@pytest.mark.parametrize("n_splits", [4, 2])  # 4: inner CV over the other outer folds; 2: nested inner CV
def test_thresholds_never_see_the_test_fold(n_splits):
    X, y, groups = _spy_data()
    plan = ev.plan_subject_folds(groups, y, n_splits, seed=0)
    seen = []

    def spy_threshold(y_true, p_all, rule="recall", target_recall=0.9):
        seen.append(len(y_true))
        return ev.choose_threshold(y_true, p_all, rule, target_recall)

    Spy.log = []
    cv = ev.subject_cv(Spy, None, X, y, groups, plan=plan, inner_splits=2, threshold_fn=spy_threshold)
    assert cv.inner == ("pairs" if n_splits > 2 else "nested")
    # every fit predicts only rows of subjects it was not trained on
    fits = [rows for kind, rows in Spy.log if kind == "fit"]
    asked = [rows for kind, rows in Spy.log if kind == "predict"]
    assert len(fits) == len(asked) > n_splits
    for trained, predicted in zip(fits, asked):
        assert set(groups[trained]).isdisjoint(groups[predicted])
    # each threshold rule call got exactly one training part
    assert sorted(set(seen)) == sorted({len(tr) for tr, _ in plan.folds})

    # adversarial test labels: flipping the labels of fold k's test cells changes neither fold k's
    # thresholds nor its predictions
    for k, (_, te) in enumerate(plan.folds):
        y_adv = y.copy()
        y_adv[te] = 1 - y_adv[te]
        adv = ev.subject_cv(Spy, None, X, y_adv, groups, plan=plan, inner_splits=2)
        for rule in ("recall", "f1"):
            assert adv.fold_thresholds[rule][k] == cv.fold_thresholds[rule][k]
        np.testing.assert_allclose(adv.p_all[te], cv.p_all[te])


def test_official_phase_threshold_ignores_the_test_labels():
    X, y, groups = _spy_data(4)
    train, test = np.flatnonzero(~np.isin(groups, ["s0", "s12"])), np.flatnonzero(np.isin(groups, ["s0", "s12"]))
    results = []
    for labels in (y, np.where(np.isin(np.arange(len(y)), test), 1 - y, y)):
        tasks, info = ev.holdout_tasks(train, test, labels, groups, inner_splits=3, seed=0)
        assert all(set(groups[t.train]).isdisjoint(groups[t.predict]) for t in tasks)
        assert all(not set(t.train) & set(test) for t in tasks)
        preds = {t.key: ev.run_fit(Spy, None, X, labels, groups, t) for t in tasks}
        results.append(ev.assemble_holdout(info, preds, labels))
    np.testing.assert_allclose(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_oof_predictions_come_from_models_that_never_saw_the_subject():
    X, y, groups = _spy_data(1)
    Spy.log = []
    p = ev.oof_predict(Spy, None, X, y, groups, n_splits=3, seed=0)
    assert not np.isnan(p).any()
    fits = [set(rows) for kind, rows in Spy.log if kind == "fit"]
    preds = [rows for kind, rows in Spy.log if kind == "predict"]
    for trained, asked in zip(fits, preds):
        assert set(groups[list(trained)]).isdisjoint(groups[asked])


def test_subject_cv_pools_every_cell_with_its_folds_threshold():
    X, y, groups = _spy_data(2)
    cv = ev.subject_cv(LogisticRegression(), None, X[:, 1:], y, groups, n_splits=4, seed=0, inner_splits=2)
    assert not np.isnan(cv.p_all).any() and (cv.fold >= 0).all()
    for i, (_, te) in enumerate(cv.plan.folds):
        assert (cv.thresholds["recall"][te] == cv.fold_thresholds["recall"][i]).all()


def test_per_subject_accuracy_is_the_fraction_of_cells_called_right():
    subjects = ["a", "a", "a", "b", "b", "H1", "H1", "H1", "H1"]
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.2, 0.8, 0.6, 0.7, 0.1, 0.9, 0.2, 0.3]
    df = ev.per_subject_accuracy(subjects, subjects, y, p, 0.5).set_index("subject")
    assert df.loc["a", "accuracy"] == pytest.approx(2 / 3)
    assert df.loc["b", "accuracy"] == 1.0
    assert df.loc["H1", "accuracy"] == pytest.approx(3 / 4) and df.loc["H1", "label"] == "hem"
    assert df.loc["a", "n_cells"] == 3


def test_parallel_folds_give_the_same_predictions_as_sequential():
    X, y, groups = _spy_data(3)
    kw = dict(n_splits=3, seed=1, inner_splits=2)
    one = ev.subject_cv(LogisticRegression(), None, X[:, 1:], y, groups, n_jobs=1, **kw)
    two = ev.subject_cv(LogisticRegression(), None, X[:, 1:], y, groups, n_jobs=2, **kw)
    np.testing.assert_allclose(one.p_all, two.p_all)
    assert one.fold_thresholds == two.fold_thresholds
