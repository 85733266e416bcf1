"""Feature screening: does a feature's cell-level signal survive at the level of subjects?

Every C-NMC subject is one class and its slides were stained together, so a feature can separate cells
well only because it tells subjects (stains) apart. Per feature, :func:`feature_screening` gives the
ROC-AUC over cells (as a per-cell classifier sees them; also with each subject weighted equally, so two
large subjects do not dominate) and the ROC-AUC over per-subject means (one value per subject), and
flags features whose cell-level signal is not carried by the subjects: too weak at subject level, or
pointing the other way.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from blastscan.errors import BlastscanError

__all__ = ["feature_screening", "screening_rows", "CELL_SIGNAL", "SURVIVE_SHARE"]

#: A feature has a cell-level signal when its cell AUC is at least this far from 0.5.
CELL_SIGNAL = 0.10
#: It survives when its subject-level AUC points the same way and keeps at least this share of that distance.
SURVIVE_SHARE = 0.5


def feature_screening(X: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per-feature cell- and subject-level AUCs and a flag for signal that does not survive subjects.

    Parameters
    ----------
    X : array (n_cells, n_features)
    y : array (n_cells,)
        1 for ALL (positive), 0 for HEM.
    groups : array (n_cells,)
        Subject (or subject group) of each cell; a subject must hold one class.
    names : sequence of str
        Feature names (columns of ``X``).

    Returns
    -------
    DataFrame
        One row per feature, sorted by subject-level strength ``|auc_subjects - 0.5|``: ``feature``,
        ``auc_cells`` (all cells alike), ``auc_cells_weighted`` (cells weighted 1 / cells of their
        subject), ``auc_subjects`` (per-subject means),
        ``n_subjects_all``, ``n_subjects_hem``, ``flipped`` (the two AUCs on opposite sides of 0.5),
        ``flag`` (a cell-level signal, ``|auc_cells - 0.5| >= CELL_SIGNAL``, that flips or keeps less than
        ``SURVIVE_SHARE`` of its distance from 0.5 at subject level).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups).astype(str)
    if X.ndim != 2 or X.shape[0] != len(y) or len(groups) != len(y) or X.shape[1] != len(names):
        raise BlastscanError("screening", f"shapes disagree: X {X.shape}, y {len(y)}, groups {len(groups)}, "
                                          f"names {len(names)}")
    if set(np.unique(y)) != {0, 1}:
        raise BlastscanError("screening", "needs cells of both classes")
    g = pd.DataFrame({"g": groups, "y": y})
    per_subject = g.groupby("g")["y"].agg(["min", "max", "size"])
    mixed = per_subject.index[per_subject["min"] != per_subject["max"]]
    if len(mixed):
        raise BlastscanError("screening", f"subjects with both classes: {', '.join(map(str, mixed[:5]))}")
    weight = 1.0 / g["g"].map(per_subject["size"]).to_numpy()
    codes, uniq = pd.factorize(groups)
    counts = np.bincount(codes)
    subj_y = np.zeros(len(uniq), int)
    subj_y[codes] = y
    rows = []
    for k, name in enumerate(names):
        col = X[:, k]
        finite = np.isfinite(col)
        col = np.where(finite, col, np.nanmedian(col[finite]) if finite.any() else 0.0)
        auc_c = roc_auc_score(y, col) if np.ptp(col) > 0 else 0.5
        auc_w = roc_auc_score(y, col, sample_weight=weight) if np.ptp(col) > 0 else 0.5
        means = np.bincount(codes, weights=col) / counts
        auc_s = roc_auc_score(subj_y, means) if np.ptp(means) > 0 else 0.5
        dc, ds = auc_c - 0.5, auc_s - 0.5
        flipped = bool(dc * ds < 0)
        signal = abs(dc) >= CELL_SIGNAL
        survives = not flipped and abs(ds) >= SURVIVE_SHARE * abs(dc)
        rows.append((name, auc_c, auc_w, auc_s, flipped, bool(signal and not survives)))
    out = pd.DataFrame(rows, columns=["feature", "auc_cells", "auc_cells_weighted", "auc_subjects", "flipped", "flag"])
    out.insert(4, "n_subjects_all", int((subj_y == 1).sum()))
    out.insert(5, "n_subjects_hem", int((subj_y == 0).sum()))
    order = np.argsort(-np.abs(out["auc_subjects"].to_numpy() - 0.5), kind="stable")
    return out.iloc[order].reset_index(drop=True)


def screening_rows(table: pd.DataFrame, fmt: str = "markdown", top: int | None = 30) -> str:
    """Render :func:`feature_screening`'s table as Markdown table rows or HTML ``<tr>`` rows (with header).

    The flag column reads ``subject?`` for a flagged feature (its cell-level signal is probably the
    subject's stain) and ``flips`` when the direction also reverses.
    """
    t = table if top is None else table.head(top)
    header = ["feature", "AUC cells", "AUC cells (subjects weighted alike)", "AUC per-subject means",
              "subjects ALL/HEM", "flag"]

    def flag(r):
        return ("subject?" + (", flips" if r.flipped else "")) if r.flag else ("flips" if r.flipped else "")

    cells = [[r.feature, f"{r.auc_cells:.3f}", f"{r.auc_cells_weighted:.3f}", f"{r.auc_subjects:.3f}", f"{r.n_subjects_all}/{r.n_subjects_hem}",
              flag(r)] for r in t.itertuples()]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    if fmt == "html":
        head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
        body = ["<tr" + (' class="flag"' if c[-1].startswith("subject") else "") + ">"
                + "".join(f"<td>{html.escape(v)}</td>" for v in c) + "</tr>" for c in cells]
        return "\n".join([head, *body])
    raise BlastscanError("screening format", f"unknown '{fmt}'; choose markdown or html")
