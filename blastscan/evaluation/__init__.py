"""Subject-disjoint evaluation: settings, grouped splits, thresholds, metrics with subject-bootstrap
intervals, and a CV expressed as independent model fits.

Every split keeps a ``group`` (a subject, or subjects linked by byte-identical images) on one side;
thresholds are chosen on training data only (grouped out-of-fold predictions inside each training part).
"""

from blastscan.evaluation.cv import (FitTask, HoldoutPlan, InnerPlan, SubjectCV, TaskKey, assemble_holdout,
                                     assemble_subject_cv, fit_model, fit_predict, holdout_tasks, make_classifier,
                                     oof_predict, run_fit, subject_cv, subject_cv_tasks)
from blastscan.evaluation.metrics import (CI_METRICS, METRIC_NAMES, bootstrap_ci, compute_metrics,
                                          per_subject_accuracy)
from blastscan.evaluation.settings import RULES, EvalSettings, rule_text
from blastscan.evaluation.splits import FoldPlan, as_labels, leaky_folds, plan_subject_folds, subject_folds
from blastscan.evaluation.thresholds import choose_threshold

__all__ = ["EvalSettings", "FoldPlan", "as_labels", "plan_subject_folds", "subject_folds", "leaky_folds",
           "RULES", "rule_text", "choose_threshold", "METRIC_NAMES", "CI_METRICS", "compute_metrics",
           "bootstrap_ci", "per_subject_accuracy", "make_classifier", "fit_model", "fit_predict", "oof_predict",
           "TaskKey", "FitTask", "InnerPlan", "HoldoutPlan", "run_fit", "subject_cv_tasks", "SubjectCV",
           "assemble_subject_cv", "holdout_tasks", "assemble_holdout", "subject_cv"]
