"""The classifier registry: families are discovered modules, parameters come from signatures, and adding a
family is one class in one new module."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification

import blastscan.classifiers as classifiers
from blastscan.classifiers import (available_classifiers, classifier_defaults, classifier_libraries,
                                   default_classifiers, describe_classifier, fit_classifier, get_classifier)
from blastscan.classifiers.base import CLASSIFIERS, Interval, Real, register_classifier
from blastscan.classifiers.fcn import FCNClassifier
from blastscan.classifiers.fcn_svm import FCNSVMClassifier
from blastscan.classifiers.svm import GroupCalibratedSVC
from blastscan.errors import BlastscanError

TOY = '''
"""A toy family: nearest class mean, softened into a probability."""

import numpy as np

from blastscan.classifiers.base import BinaryClassifier, Interval, Real, register_classifier


@register_classifier("toy", "nearest class mean", default=False, libraries=[("scipy", 1)])
class ToyClassifier(BinaryClassifier):
    _parameter_constraints = {"temperature": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, temperature=1.0, random_state=0):
        self.temperature = temperature
        self.random_state = random_state

    def _fit(self, X, y01, groups):
        self.means_ = np.stack([X[y01 == k].mean(axis=0) for k in (0, 1)])

    def _proba1(self, X):
        d = ((X[:, None, :] - self.means_) ** 2).sum(axis=-1)
        return 1.0 / (1.0 + np.exp((d[:, 1] - d[:, 0]) / self.temperature))
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on the package's ``__path__``: a module written there is a module of the package, found
    when the registry next discovers its modules (as a fresh process would)."""
    monkeypatch.setattr(classifiers, "__path__", [*classifiers.__path__, str(tmp_path)])
    # the registry as it is now comes back after the test, and discovery runs again (finding tmp_path)
    with CLASSIFIERS.restored(rediscover=True):
        yield tmp_path
    for name, module in list(sys.modules.items()):  # the next test must not find the toy family
        if name.startswith("blastscan.classifiers.") and str(tmp_path) in str(getattr(module, "__file__", "")):
            del sys.modules[name]


def test_a_new_family_is_one_class_in_one_new_module(plugin_dir):
    (plugin_dir / "toy.py").write_text(TOY)
    assert "toy" in available_classifiers()
    assert "toy" not in default_classifiers()  # declared default=False
    assert classifier_defaults("toy") == {"temperature": 1.0}
    assert describe_classifier("toy") == "toy: nearest class mean (defaults: temperature=1.0)"
    assert classifier_libraries("toy") == [("scikit-learn", 2), ("numpy", 1), ("scipy", 1)]
    with pytest.raises(BlastscanError, match="temperature=0 is invalid"):
        get_classifier("toy", temperature=0)

    X, y = make_classification(120, 6, random_state=0)
    est = fit_classifier(get_classifier("toy", temperature=2.0), X, y, groups=np.arange(120) // 6)
    assert est.get_params()["model__temperature"] == 2.0 and est.steps[0][0] == "scale"
    proba = est.predict_proba(X)
    assert proba.shape == (120, 2) and (proba[:, 1][y == 1].mean() > proba[:, 1][y == 0].mean())


def test_the_family_is_gone_with_its_module():
    # runs after the test above: a family written for one test must not leak into the others
    assert "toy" not in available_classifiers()


def test_two_modules_declaring_one_name_are_refused(plugin_dir):
    (plugin_dir / "other_svm.py").write_text(TOY.replace('"toy"', '"svm"'))
    with pytest.raises(BlastscanError, match="declared twice"):
        available_classifiers()


def test_signature_and_value_ranges_must_name_the_same_parameters():
    with pytest.raises(TypeError, match="differ"):
        @register_classifier("broken", "x", params={"C": [Interval(Real, 0, None, closed="neither")]})
        def build(C=1.0, gamma=0.1, random_state=0):  # gamma has no value range
            return None

    with pytest.raises(TypeError, match="needs a default"):
        @register_classifier("broken", "x", params={"C": [Interval(Real, 0, None, closed="neither")]})
        def build2(C, random_state=0):
            return None


def test_default_lists_and_libraries_come_from_the_registry():
    # the defaults that won on the dev data (benchmarks/bench_accuracy.py); xgboost and the FCNs are opt-in
    assert default_classifiers() == ["logreg", "svm", "svm_pca"]
    assert classifier_libraries("logreg") == [("scikit-learn", 2), ("numpy", 1)]
    assert classifier_libraries("xgboost")[-1] == ("xgboost", 2)
    assert classifier_libraries("fcn_svm")[-2:] == [("tensorflow", 2), ("keras", 2)]
    assert {lib for lib, _ in classifier_libraries()} == {"scikit-learn", "numpy", "xgboost", "tensorflow", "keras"}
    with pytest.raises(BlastscanError, match="unknown"):
        classifier_libraries("random_forest")


def test_fcn_svm_takes_its_parts_parameters():
    # its own parameter (which subjects the SVM learns from) plus its parts', none restated
    parts = {"svm_share": 0.34, **FCNClassifier().get_params(), **GroupCalibratedSVC().get_params()}
    assert FCNSVMClassifier().get_params() == parts
    est = FCNSVMClassifier(hidden=8, C=3.0, random_state=7)
    assert est._part(FCNClassifier).get_params() == {**FCNClassifier().get_params(), "hidden": 8, "random_state": 7}
    assert est._part(GroupCalibratedSVC).get_params()["C"] == 3.0
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(TypeError):
        FCNSVMClassifier(kernel="linear")
