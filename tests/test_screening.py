"""Feature screening: a subject-level stain feature is flagged, a cell-level signal carried by subjects is not."""

from __future__ import annotations

import numpy as np
import pytest

from blastscan.errors import BlastscanError
from blastscan.evaluation.screening import feature_screening, screening_rows


def _cohort(rng):
    # HEM: 2 large subjects (as H10/H14) and 6 small ones; ALL: 8 subjects of 30 cells.
    subjects = [("H1", 0, 200), ("H2", 0, 200)] + [(f"H{k}", 0, 5) for k in range(3, 9)] + \
               [(f"A{k}", 1, 30) for k in range(8)]
    y = np.concatenate([[lab] * n for _, lab, n in subjects])
    groups = np.concatenate([[s] * n for s, _, n in subjects])
    # "stain": high on the two large HEM subjects, low on the small HEM ones, ALL in between.
    stain_by_subject = {s: (1.0 if n == 200 else (-1.0 if lab == 0 else 0.0)) for s, lab, n in subjects}
    stain = np.array([stain_by_subject[g] for g in groups]) + rng.normal(0, 0.1, len(y))
    size = y * 1.0 + rng.normal(0, 0.5, len(y))  # a cell property: larger in ALL on every subject
    noise = rng.normal(size=len(y))
    return np.column_stack([stain, size, noise]), y, groups


def test_stain_feature_is_flagged_and_cell_feature_survives():
    X, y, groups = _cohort(np.random.default_rng(0))
    t = feature_screening(X, y, groups, ["stain", "size", "noise"]).set_index("feature")
    assert t.loc["stain", "auc_cells"] < 0.2 and t.loc["stain", "auc_subjects"] > 0.6  # flips
    assert t.loc["stain", "flipped"] and t.loc["stain", "flag"]
    assert t.loc["size", "auc_cells"] > 0.8 and t.loc["size", "auc_subjects"] > 0.9 and not t.loc["size", "flag"]
    assert not t.loc["noise", "flag"]  # no cell-level signal: nothing to flag
    assert (t["n_subjects_all"] == 8).all() and (t["n_subjects_hem"] == 8).all()
    md = screening_rows(t.reset_index(), "markdown")
    assert md.count("\n") == 4 and "subject?, flips" in md
    html = screening_rows(t.reset_index(), "html")
    assert html.count("<tr") == 4 and 'class="flag"' in html


def test_subjects_holding_both_classes_are_refused():
    X = np.zeros((4, 1))
    with pytest.raises(BlastscanError, match="both classes"):
        feature_screening(X, np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]), ["f"])
