"""The blast-fraction interval: it carries the spread of recall and specificity across patients and the
binomial count of the subject's own cells, covers the truth in simulation, and old bundles keep scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from blastscan.evaluation.patient import (LOW_SPECIFICITY, MIN_CELLS_FOR_FRACTION, blast_fraction,
                                          operating_point_bootstrap)
from blastscan.bundle.scoring import TrainingRates, fraction_warnings, subject_summary


def _training(rng, n_all, n_hem, cells, tpr_beta, fpr_beta):
    """Out-of-fold calls of a synthetic training set: each subject has its own recall (ALL) or
    false-positive rate (HEM) from the given Beta; P(ALL) is 1 for a cell called ALL, else 0."""
    y, p, s = [], [], []
    for i in range(n_all + n_hem):
        is_all = i < n_all
        rate = rng.beta(*(tpr_beta if is_all else fpr_beta))
        y += [int(is_all)] * cells
        p += list((rng.random(cells) < rate).astype(float))
        s += [f"{'A' if is_all else 'H'}{i}"] * cells
    return np.array(y), np.array(p), np.array(s)


@pytest.fixture(scope="module")
def steady():
    """Many subjects, alike: recall about 0.9, specificity about 0.9 in every patient."""
    y, p, s = _training(np.random.default_rng(1), 30, 20, 60, (90, 10), (10, 90))
    return operating_point_bootstrap(y, p, s, 0.5, n_boot=100, seed=0)


@pytest.fixture(scope="module")
def varied():
    """Few subjects whose rates differ from patient to patient (same means)."""
    y, p, s = _training(np.random.default_rng(2), 8, 5, 60, (9, 1), (1, 9))
    return operating_point_bootstrap(y, p, s, 0.5, n_boot=100, seed=0)


def _width(res):
    return res[2] - res[1]


def test_the_record_is_json_with_counts_per_subject_and_no_names(steady):
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.7, 0.6, 0.1, 0.1, 0.3])
    s = np.array(["P1", "P1", "P2", "H1", "H1", "H2", "H2"])
    rec = operating_point_bootstrap(y, p, s, 0.5, n_boot=20, seed=3)
    assert rec["per_subject"] == [[0, 2, 0], [0, 2, 1], [1, 1, 1], [1, 2, 1]]
    assert rec["recall"] == pytest.approx(2 / 3) and rec["specificity"] == pytest.approx(3 / 4)
    assert len(rec["pairs"]) == 20 and len(rec["beta"]) == 20
    assert "P1" not in json.dumps(rec) and json.loads(json.dumps(rec)) == rec
    assert rec == operating_point_bootstrap(y, p, s, 0.5, n_boot=20, seed=3)  # seeded
    lo, hi = steady["recall_ci"]
    assert lo < steady["recall"] < hi


def test_fewer_cells_give_a_wider_interval(steady):
    many = blast_fraction(110, 200, None, None, bootstrap=steady)
    few = blast_fraction(11, 20, None, None, bootstrap=steady)
    assert many[1] <= many[0] <= many[2] and few[1] <= few[0] <= few[2]
    assert _width(few) > 1.5 * _width(many)
    # 0.55 called ALL with recall 0.9 and 1 - specificity 0.1: about 56% blasts
    assert many[0] == pytest.approx(0.5625, abs=0.06)


def test_rates_that_vary_between_patients_give_a_wider_interval(steady, varied):
    for k, n in ((110, 200), (20, 200), (190, 200)):
        assert _width(blast_fraction(k, n, None, None, bootstrap=varied)) > \
            1.3 * _width(blast_fraction(k, n, None, None, bootstrap=steady))


def test_cells_called_all_never_give_a_zero_interval(varied):
    # the subject H10: 4 of 12 cells called ALL, reported as 0.0 [0.0, 0.0] before
    est, lo, hi = blast_fraction(4, 12, 0.9, 0.305, bootstrap=varied)
    assert hi > 0.2 and hi > lo
    # few cells and none called ALL: 0 is likely, but not certain
    assert blast_fraction(0, 12, None, None, bootstrap=varied)[2] > 0.05
    # the old interval did give [0, 0] there; it stays for bundles without the record
    assert blast_fraction(4, 12, 0.9, 0.305) == (0.0, 0.0, 0.0)  # the exported model of the issue


def test_the_interval_covers_the_truth_in_simulation(varied):
    """Patients drawn from the population the training subjects came from: covered >= 90% of the time."""
    rng = np.random.default_rng(7)
    covered = []
    for f in (0.0, 0.1, 0.3, 0.6, 0.9, 1.0):
        for n in (25, 200):
            for _ in range(25):
                k = int(round(f * n))
                tpr, fpr = rng.beta(9, 1), rng.beta(1, 9)
                x = rng.binomial(k, tpr) + rng.binomial(n - k, fpr)
                _, lo, hi = blast_fraction(int(x), n, None, None, bootstrap=varied)
                covered.append(lo - 1e-9 <= k / n <= hi + 1e-9)
    assert np.mean(covered) >= 0.90, np.mean(covered)


def test_summary_status_and_warnings_say_what_the_numbers_rest_on(steady):
    rows = pd.DataFrame({"subject": ["A"] * 30 + ["B"] * 5, "p_all": [0.9] * 20 + [0.1] * 15,
                         "pred": ["all"] * 20 + ["hem"] * 15})
    new = subject_summary(rows, 0.5, rates=TrainingRates(0.9, 0.9, steady)).set_index("subject")
    assert new.loc["A", "blast_fraction_status"] == "ok"
    assert new.loc["B", "blast_fraction_status"] == f"too few cells (< {MIN_CELLS_FOR_FRACTION} scored)"
    assert new.loc["B", "blast_fraction_high"] > new.loc["B", "blast_fraction_low"]  # numbers kept, wide
    # a bundle made before the record: the old interval, and a note in the status and the warnings
    old = subject_summary(rows, 0.5, rates=(0.9, 0.9)).set_index("subject")
    assert old.loc["A", "blast_fraction_status"].startswith("old bundle")
    assert (old.loc["A", "blast_fraction_low"], old.loc["A", "blast_fraction_high"]) == \
        pytest.approx(blast_fraction(20, 30, 0.9, 0.9)[1:])
    assert any("predates" in w for w in fraction_warnings(TrainingRates(0.9, 0.9)))
    assert not fraction_warnings(TrainingRates(0.9, 0.9, steady))
    low = fraction_warnings(TrainingRates(0.9, LOW_SPECIFICITY - 0.1, steady))
    assert len(low) == 1 and "specificity" in low[0]
