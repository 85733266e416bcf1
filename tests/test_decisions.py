"""Issue 23: what ships is what was measured. The ranking (ROC-AUC first, identical configurations collapsed),
the one threshold procedure shared by compare's outer folds and the shipped bundle, and the calibration of
P(ALL) fitted on subject-grouped out-of-fold scores only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.naive_bayes import GaussianNB

from blastscan.evaluation import EvalSettings, TaskKey, choose_threshold, fit_predict, oof_predict, plan_subject_folds
from blastscan.evaluation import cv as cvmod
from blastscan.evaluation import decision as dec
from blastscan.evaluation.calibration import apply_calibration, brier_score, fit_calibration
from blastscan.pipelines.compare import collapse_equivalent
from blastscan.pipelines.grid import ConfigSpec
from blastscan.report.results import SUBJECT_POOLED, rank_configs


def subjects_data(n_all=10, n_hem=8, seed=0, d=5, shift=0.8):
    """Cells of ``n_all`` ALL and ``n_hem`` HEM subjects; each subject shifts its cells (a stain)."""
    rng = np.random.default_rng(seed)
    X, y, g = [], [], []
    for s in range(n_all + n_hem):
        label = int(s < n_all)
        n = int(rng.integers(15, 40))
        centre = rng.normal(0, shift, d) + 0.9 * label
        X.append(centre + rng.normal(0, 1, (n, d)))
        y += [label] * n
        g += [f"S{s}"] * n
    return np.vstack(X), np.array(y), np.array(g)


# -- ranking -------------------------------------------------------------------------------------------
def _row(config, auc, wf1):
    return {"config": config, "split": SUBJECT_POOLED, "headline": True, "roc_auc": auc, "weighted_f1": wf1}


def test_ranking_puts_roc_auc_before_a_lucky_threshold():
    # the case: a higher weighted F1 at a lucky threshold must not beat a better ROC-AUC
    m = pd.DataFrame([_row("size/svm_pca", 0.756, 0.798), _row("size/logreg", 0.832, 0.797),
                      _row("x/svm", 0.832, 0.80), _row("y/svm", np.nan, 0.9),
                      {**_row("size/logreg", 0.99, 0.99), "headline": False}])  # other rule: not ranked
    assert list(rank_configs(m)["config"]) == ["x/svm", "size/logreg", "size/svm_pca", "y/svm"]


def test_ranking_uses_the_within_fold_roc_auc_where_a_run_has_it():
    # pooling five models' scores can lift a pooled ROC-AUC (0.88 here) that no single model earns in its fold
    m = pd.DataFrame([{**_row("pooled/lucky", 0.88, 0.80), "roc_auc_within_folds": 0.70},
                      {**_row("steady/one", 0.82, 0.80), "roc_auc_within_folds": 0.79},
                      {**_row("holdout/only", 0.75, 0.90), "roc_auc_within_folds": np.nan}])  # falls back to pooled
    assert list(rank_configs(m)["config"]) == ["steady/one", "holdout/only", "pooled/lucky"]


def _spec(fs, clf, **params):
    return ConfigSpec(f"{fs}/{clf}", fs, clf, params)


def test_svm_pca_no_wider_than_its_pca_is_collapsed_into_svm():
    configs = [_spec("size", "logreg"), _spec("size", "svm"), _spec("size", "svm_pca"),
               _spec("inception_v3", "svm"), _spec("inception_v3", "svm_pca"), _spec("shape", "svm_pca")]
    out, notes = collapse_equivalent(configs, {"size": 12, "inception_v3": 2048, "shape": 20}, n_rows=2000)
    names = [c.name for c in out]
    # size: 12 features <= 128 components: the same model as size/svm, one row standing for both
    assert "size/svm_pca" not in names and dict((c.name, c.aliases) for c in out)["size/svm"] == ("size/svm_pca",)
    assert len(notes) == 1 and "size/svm_pca is the same model as size/svm" in notes[0]
    # wide sets keep both; a set without its svm twin keeps svm_pca
    assert {"inception_v3/svm", "inception_v3/svm_pca", "shape/svm_pca"} <= set(names)
    # other parameters than the twin's: not the same model
    out, _ = collapse_equivalent([_spec("size", "svm"), _spec("size", "svm_pca", C=10.0)], {"size": 12}, 2000)
    assert len(out) == 2
    out, _ = collapse_equivalent([_spec("size", "svm"), _spec("size", "svm_pca", n_components=8)], {"size": 12}, 2000)
    assert len(out) == 2


def test_the_collapsed_pair_really_is_one_model():
    # the premise of the collapse: PCA keeping every component is a rotation the RBF SVM does not see
    X, y, g = subjects_data(n_all=5, n_hem=5, d=6)
    idx = np.arange(len(y))
    tr, te = idx[g != "S0"], idx[g == "S0"]
    p_svm = fit_predict("svm", {}, X, y, g, tr, te, seed=0)
    p_pca = fit_predict("svm_pca", {}, X, y, g, tr, te, seed=0)
    np.testing.assert_allclose(p_svm, p_pca, atol=1e-6)


# -- one threshold procedure ------------------------------------------------------------------------------
def test_compare_folds_and_the_shipped_model_use_one_decide(monkeypatch):
    X, y, g = subjects_data()
    calls = []
    real = dec.decide

    def spy(y_true, p_oof, **kw):
        calls.append(len(y_true))
        return real(y_true, p_oof, **kw)

    monkeypatch.setattr(dec, "decide", spy)
    plan = plan_subject_folds(g, y, 5, 0)
    cvmod.subject_cv("logreg", None, X, y, g, plan=plan, seed=0)
    assert calls == [len(tr) for tr, _ in plan.folds]  # once per outer fold, on its training part only
    calls.clear()
    d, inner = cvmod.shipped_decision("logreg", None, X, y, g, n_splits=4, seed=0, target_recall=0.9)
    assert calls == [len(y)] and inner.n_splits == 4  # the same function, on all training subjects


def test_shipped_threshold_is_decide_on_an_inner_cv_of_compares_width_not_the_old_pooled_rule():
    from blastscan.pipelines.train import TrainingData, _fit_with_threshold

    X, y, g = subjects_data(seed=1)
    data = TrainingData(fm=None, X=X, y=y, groups=g, subjects=g)
    settings = EvalSettings(folds=5, n_boot=50)
    fitted = _fit_with_threshold(data, GaussianNB(), None, settings, progress=False)
    # compare ran 5 outer folds with inner CVs over the other 4: the shipped procedure has 4 folds
    assert fitted.estimate["inner_mode"] == "pairs" and fitted.inner_splits == 4
    plan = plan_subject_folds(g, y, 4, 0, what="threshold folds")
    oof = np.full(len(y), np.nan)
    for tr, te in plan.folds:
        oof[te] = fit_predict(GaussianNB(), None, X, y, g, tr, te, 0)
    expected = dec.decide(y, oof, groups=g, target_recall=0.9)
    assert fitted.threshold == pytest.approx(expected.thresholds["recall"], abs=1e-12)
    assert fitted.decision.calibration == pytest.approx(expected.calibration)
    # the old rule: one threshold on pooled raw out-of-fold P(ALL) of the 5 threshold folds
    old = choose_threshold(y, oof_predict(GaussianNB(), None, X, y, g, n_splits=5, seed=0), "recall", 0.9)
    assert abs(fitted.threshold - old) > 1e-3
    # and what the bundle says about it is the outer-fold result compare would report for this model
    cv = cvmod.subject_cv(GaussianNB(), None, X, y, g, plan=plan_subject_folds(g, y, 5, 0), seed=0,
                          targets=(0.9,))
    called = cv.p_all >= cv.at_target(0.9)
    recall = called[y == 1].mean()
    assert fitted.estimate["metrics"]["recall_all"] == pytest.approx(recall)
    lo, hi = fitted.estimate["ci"]["recall_all"]
    assert lo <= recall <= hi


def test_spread_note_names_unstable_thresholds():
    assert dec.spread_note([0.40, 0.45, 0.5]) == ""
    assert "unstable threshold" in dec.spread_note([0.2, 0.45, 0.7])
    assert dec.threshold_spread([0.2, 0.7]) == pytest.approx(0.5)


# -- calibration -------------------------------------------------------------------------------------------
def test_calibration_map_is_plain_numbers_monotone_and_never_reverses():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 + (y - 0.5) * 0.9 + rng.normal(0, 0.1, 400), 0.001, 0.999)  # overconfident
    cal = fit_calibration(y, p)
    assert set(cal) == {"method", "a", "b", "n", "weights"} and all(isinstance(cal[k], float) for k in ("a", "b"))
    q = apply_calibration(np.linspace(0.01, 0.99, 50), cal)
    assert np.all(np.diff(q) >= 0)
    # a model ranking backwards is neither flipped nor flattened (either would change its calls): no map
    assert fit_calibration(y, 1 - p) is None
    assert fit_calibration(np.ones(5), np.linspace(0, 1, 5)) is None
    assert np.isnan(apply_calibration([np.nan], cal)[0])


def test_grouped_oof_calibration_improves_brier_on_held_out_subjects():
    # Gaussian naive Bayes on correlated features is overconfident; the map fitted on the training part's
    # inner grouped out-of-fold P(ALL) must bring the held-out subjects' Brier score down
    X, y, g = subjects_data(n_all=12, n_hem=10, d=8, seed=3)
    X = np.hstack([X, X + np.random.default_rng(0).normal(0, 0.3, X.shape)])  # duplicated evidence
    plan = plan_subject_folds(g, y, 5, 0)
    cal = cvmod.subject_cv(GaussianNB(), None, X, y, g, plan=plan, seed=0)
    raw = cvmod.subject_cv(GaussianNB(), None, X, y, g, plan=plan, seed=0, calibrate=False)
    np.testing.assert_array_equal(cal.p_raw, raw.p_all)
    assert brier_score(y, cal.p_all) < brier_score(y, raw.p_all) - 0.01


def test_calibration_never_sees_the_test_fold():
    X, y, g = subjects_data(seed=2)
    plan = plan_subject_folds(g, y, 5, 0)
    tasks, inner = cvmod.subject_cv_tasks(plan, y, g)
    preds = {t.key: fit_predict("logreg", None, X, y, g, t.train, t.predict, 0) for t in tasks}
    a = cvmod.assemble_subject_cv(plan, inner, preds, y, targets=(0.95,))
    rng = np.random.default_rng(0)
    spoiled = {k: (rng.random(len(v)) if k.role == "outer" else v) for k, v in preds.items()}
    b = cvmod.assemble_subject_cv(plan, inner, spoiled, y, targets=(0.95,))
    # test-fold predictions changed: the maps and thresholds each fold applies to them did not
    assert a.calibrations == b.calibrations and a.fold_thresholds == b.fold_thresholds
    assert a.target_thresholds == b.target_thresholds
    k = 0
    te = plan.folds[k][1]
    np.testing.assert_allclose(b.p_all[te], apply_calibration(spoiled[TaskKey("outer", k)], a.calibrations[k]))


def test_every_subject_weighs_the_same_in_the_calibration_fit():
    # the C-NMC shape: many small subjects ranked right, one huge healthy subject scored high (its stain);
    # cell weights follow the huge subject (no positive slope), subject weights follow the patients
    rng = np.random.default_rng(1)
    y, p, g = [], [], []
    for s in range(20):
        label = s % 2
        n = 10
        y += [label] * n
        p += list(np.clip(rng.normal(0.35 + 0.3 * label, 0.1, n), 0.01, 0.99))
        g += [f"S{s}"] * n
    y += [0] * 400
    p += list(np.clip(rng.normal(0.9, 0.05, 400), 0.01, 0.99))
    g += ["H_big"] * 400
    y, p, g = np.array(y), np.array(p), np.array(g)
    assert fit_calibration(y, p) is None
    cal = fit_calibration(y, p, g)
    assert cal["a"] > 0 and cal["weights"] == "subject"


def test_default_feature_sets_take_the_deep_sets_whose_weights_are_found(tmp_path, monkeypatch):
    from blastscan.pipelines.compare import default_feature_sets

    monkeypatch.delenv("BLASTSCAN_WEIGHTS_DIR", raising=False)
    chosen, left_out = default_feature_sets({"weights_dir": str(tmp_path)})
    assert chosen == ["size", "handcrafted"]
    assert len(left_out) == 2 and all("no weights found" in n and str(tmp_path) in n for n in left_out)
    assert left_out[0].startswith("inception_v3:")
    (tmp_path / "inception_v3_imagenet_notop.weights.h5").write_bytes(b"")
    chosen, left_out = default_feature_sets({"weights_dir": str(tmp_path)})
    assert chosen == ["size", "handcrafted", "inception_v3"] and [n.split(":")[0] for n in left_out] == ["vgg16"]


def test_export_resolves_a_collapsed_configuration_to_its_twin():
    from blastscan.errors import BlastscanError
    from blastscan.pipelines.export import _resolve_config

    run = {"configs": [{"name": "size/svm"}, {"name": "size/logreg"}], "same_as": {"size/svm_pca": "size/svm"}}
    assert _resolve_config(run, "size/svm_pca") == ({"name": "size/svm"}, "size/svm")
    with pytest.raises(BlastscanError, match="not in this run"):
        _resolve_config(run, "size/xgboost")


def test_within_fold_roc_auc_ignores_each_folds_scale_and_pooling_does_not():
    """A per-fold monotone rescaling (what each fold's calibration map does) leaves every fold's ranking, and
    so the within-fold ROC-AUC, as it was, while the pooled ROC-AUC moves."""
    from sklearn.metrics import roc_auc_score

    from blastscan.evaluation.metrics import within_fold_roc_auc

    rng = np.random.default_rng(0)
    fold = np.repeat(np.arange(4), 50)
    y = rng.integers(0, 2, len(fold))
    p = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, len(fold)))))
    shifted = np.clip(p * np.array([0.2, 0.5, 1.0, 0.9])[fold] + np.array([0.0, 0.4, 0.0, 0.1])[fold], 0, 1)
    assert within_fold_roc_auc(y, shifted, fold) == pytest.approx(within_fold_roc_auc(y, p, fold), abs=1e-12)
    assert abs(roc_auc_score(y, shifted) - roc_auc_score(y, p)) > 0.01
    expected = np.mean([roc_auc_score(y[fold == k], p[fold == k]) for k in range(4)])
    assert within_fold_roc_auc(y, p, fold) == pytest.approx(expected)
    one_class = fold.copy()
    y2 = y.copy()
    y2[fold == 0] = 1  # a fold of one class has no ROC-AUC and is left out
    assert within_fold_roc_auc(y2, p, one_class) == pytest.approx(
        np.mean([roc_auc_score(y2[fold == k], p[fold == k]) for k in range(1, 4)]))
