"""Patient-level results: per-subject mean P(ALL) and blast fraction, how well those separate subjects,
the opt-in within-subject scoring, and a subject's blast fraction corrected for the model's errors.

Every C-NMC subject is one class, so on this data subject-level numbers measure separating patients, not
counting blasts in a mixed smear; reports say so beside them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import betaln
from scipy.stats import norm

from blastscan.evaluation.settings import EvalSettings
from blastscan.evaluation.splits import as_labels

__all__ = ["WITHIN_SUBJECT_WEIGHT", "MIN_CELLS_FOR_FRACTION", "LOW_SPECIFICITY", "subject_means", "patient_metrics",
           "within_subject", "blast_fraction", "simulate_blast_fraction", "operating_point_bootstrap"]

#: Weight of a cell's own P(ALL) in within-subject scoring (the rest: the mean over its subject's cells).
WITHIN_SUBJECT_WEIGHT = 0.5


def subject_means(subjects, y, p_all, threshold) -> pd.DataFrame:
    """Per subject: ``label`` (majority), ``n_cells``, ``mean_p_all`` and ``fraction_called_all`` (cells with
    ``p_all >= threshold``; ``threshold`` may be per cell)."""
    y = as_labels(y)
    p = np.asarray(p_all, dtype=float)
    called = (p >= np.broadcast_to(np.asarray(threshold, dtype=float), p.shape)).astype(float)
    df = pd.DataFrame({"subject": np.asarray(subjects).astype(str), "y": y, "p": p, "called": called})
    out = df.groupby("subject", sort=True).agg(y=("y", "mean"), n_cells=("y", "size"), mean_p_all=("p", "mean"),
                                               fraction_called_all=("called", "mean"))
    out["label"] = np.where(out["y"] >= 0.5, "all", "hem")
    return out.reset_index()[["subject", "label", "n_cells", "mean_p_all", "fraction_called_all"]]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def patient_metrics(subjects, y, p_all, threshold, *, n_boot: int = EvalSettings.n_boot, seed: int = EvalSettings.seed,
                    level: float = 0.95) -> dict[str, float]:
    """How well per-subject summaries separate ALL from HEM subjects.

    ``subject_roc_auc``: ROC-AUC of each subject's mean P(ALL) against its class; ``subject_call_accuracy``:
    share of subjects called right when a subject is called ALL if at least half its cells are; with
    ``_ci_low``/``_ci_high`` from resampling subjects (separately per class), and ``n_subjects``.
    """
    t = subject_means(subjects, y, p_all, threshold)
    ys = (t["label"] == "all").to_numpy().astype(int)
    mean_p = t["mean_p_all"].to_numpy()
    call = (t["fraction_called_all"].to_numpy() >= 0.5).astype(int)
    out = {"subject_roc_auc": _auc(ys, mean_p), "subject_call_accuracy": float((call == ys).mean()),
           "n_subject_all": int(ys.sum()), "n_subject_hem": int(len(ys) - ys.sum())}
    strata = [np.flatnonzero(ys == c) for c in (0, 1)]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if n_boot <= 0 or min(len(s) for s in strata) < 2:
        for k in ("subject_roc_auc", "subject_call_accuracy"):
            out[f"{k}_ci_low"] = out[f"{k}_ci_high"] = float("nan")
        return out
    rng = np.random.default_rng(seed)
    aucs, accs = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        draw = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        aucs[b] = _auc(ys[draw], mean_p[draw])
        accs[b] = (call[draw] == ys[draw]).mean()
    for k, vals in (("subject_roc_auc", aucs), ("subject_call_accuracy", accs)):
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = (float(v) for v in np.quantile(vals, [lo_q, hi_q]))
    return out


def within_subject(p_all, subjects, weight: float = WITHIN_SUBJECT_WEIGHT) -> np.ndarray:
    """``weight * p + (1 - weight) * mean P(ALL) of the cell's subject``: a cell's probability pulled toward
    its subject's other cells (opt-in; it uses other cells of the same patient, so it is never a headline)."""
    p = np.asarray(p_all, dtype=float)
    s = pd.Series(p).groupby(np.asarray(subjects).astype(str)).transform("mean").to_numpy()
    return weight * p + (1 - weight) * s


#: Fewer scored cells than this: the subject's blast fraction gets the status "too few cells" (its interval is
#: still given, and wide).
MIN_CELLS_FOR_FRACTION = 20
#: Training specificity below this: a warning beside every blast fraction. More than 40% of a healthy
#: patient's cells are then called ALL, and the correction divides the called share's noise by
#: recall - (1 - specificity) <= recall - 0.4.
LOW_SPECIFICITY = 0.6
#: Subject-bootstrap resamples of the operating point recorded in a bundle.
OPERATING_POINT_BOOT = 200
#: Monte Carlo draws behind one subject's blast-fraction interval.
FRACTION_DRAWS = 4000
#: A draw whose recall - (1 - specificity) is below this carries no information on the fraction: it draws
#: the fraction uniformly on [0, 1] instead of dividing by (almost) zero.
MIN_SEPARATION = 0.05


def operating_point_bootstrap(y, p_all, subjects, threshold: float, *, n_boot: int = OPERATING_POINT_BOOT,
                              seed: int = 0, level: float = 0.95) -> dict:
    """What a subject's blast-fraction interval needs to know of the model's errors, from out-of-fold P(ALL)
    of the training data at the shipped ``threshold`` (recorded in the bundle as
    ``training_metrics["operating_point_bootstrap"]``).

    Per class, a patient's own rate (ALL recall for ALL subjects, the share of cells called ALL for HEM
    subjects) is modelled as drawn from a Beta distribution across patients, fitted by maximum likelihood
    to the per-subject counts (beta-binomial: a subject's count is binomial around its own rate, so a
    subject of 2 cells says little and one of 400 a lot). ``n_boot`` resamples of the subjects (per class,
    ``seed``) refit it, so the interval also carries how well the training subjects pin that spread down.

    Returns a JSON-able dict: ``per_subject`` = ``[label (1 = ALL), cells, cells called ALL]`` per training
    subject (no names), sorted; ``recall`` / ``specificity`` pooled over cells; ``recall_ci`` /
    ``specificity_ci`` (subject bootstrap of the pooled rates); ``pairs``: the bootstrap's pooled
    ``[recall, specificity]``; ``beta``: per resample ``[a_all, b_all, a_hem, b_hem]``, the fitted
    Beta of a patient's recall (ALL) and false-positive rate (HEM); and the ``threshold``, ``seed``,
    ``n_boot`` and ``level`` used.
    """
    y = as_labels(y)
    p = np.asarray(p_all, dtype=float)
    ok = ~np.isnan(p)
    df = pd.DataFrame({"s": np.asarray(subjects).astype(str)[ok], "y": y[ok], "c": (p[ok] >= threshold).astype(int)})
    per = df.groupby("s", sort=True).agg(y=("y", "max"), n=("y", "size"), k=("c", "sum"))
    rows = sorted([int(a), int(b), int(c)] for a, b, c in per[["y", "n", "k"]].to_numpy())
    table = np.asarray(rows, dtype=float).reshape(-1, 3)
    out = {"method": "beta-binomial fit of per-subject out-of-fold calls at the shipped threshold, "
                     "subject bootstrap", "threshold": float(threshold), "seed": int(seed), "n_boot": int(n_boot),
           "level": float(level), "per_subject": rows}
    pos, neg = table[table[:, 0] == 1], table[table[:, 0] == 0]
    out["recall"] = float(pos[:, 2].sum() / pos[:, 1].sum()) if len(pos) else float("nan")
    out["specificity"] = float(1 - neg[:, 2].sum() / neg[:, 1].sum()) if len(neg) else float("nan")
    if n_boot <= 0 or not len(pos) or not len(neg):
        return out
    rng = np.random.default_rng(seed)
    rec, spec, beta = np.empty(n_boot), np.empty(n_boot), np.empty((n_boot, 4))
    for b in range(n_boot):
        a = pos[rng.integers(0, len(pos), len(pos))]
        h = neg[rng.integers(0, len(neg), len(neg))]
        rec[b], spec[b] = a[:, 2].sum() / a[:, 1].sum(), 1 - h[:, 2].sum() / h[:, 1].sum()
        beta[b, :2] = _fit_beta_binomial(a[:, 1], a[:, 2])
        beta[b, 2:] = _fit_beta_binomial(h[:, 1], h[:, 2])
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out["recall_ci"] = [round(float(v), 4) for v in np.quantile(rec, q)]
    out["specificity_ci"] = [round(float(v), 4) for v in np.quantile(spec, q)]
    out["pairs"] = [[round(float(r), 4), round(float(s_), 4)] for r, s_ in zip(rec, spec)]
    out["beta"] = [[float(f"{v:.4g}") for v in row] for row in beta]
    return out


#: Bounds of a fitted Beta's a + b (its "number of cells' worth" of certainty): below, a patient's rate would
#: pile up at 0 and 1; above, patients would be all alike.
_BETA_SUM = (1.0, 1e4)


def _fit_beta_binomial(n: np.ndarray, k: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Beta(a, b) of per-subject rates given ``k`` of ``n`` cells per subject
    (beta-binomial), with its mean kept off 0 and 1 by half a cell (Jeffreys) and ``a + b`` in
    :data:`_BETA_SUM`."""
    n, k = np.asarray(n, dtype=float), np.asarray(k, dtype=float)
    mean_ = (k.sum() + 0.5) / (n.sum() + 1.0)  # the pooled rate fixes the mean; the fit finds the spread

    def nll(log_sum: float) -> float:
        s = math.exp(log_sum)
        a, b = mean_ * s, (1 - mean_) * s
        return -float(np.sum(betaln(k + a, n - k + b) - betaln(a, b)))

    lo, hi = (math.log(v) for v in _BETA_SUM)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
    s = math.exp(float(res.x))
    return mean_ * s, (1 - mean_) * s


def blast_fraction(n_called_all: int, n_cells: int, recall: float | None, specificity: float | None,
                   level: float = 0.95, *, bootstrap: dict | None = None, n_draws: int = FRACTION_DRAWS,
                   seed: int | None = None) -> tuple[float, float, float]:
    """A subject's share of blasts from the share of its cells called ALL, corrected for the model's known
    errors (adjusted classify-and-count: ``(q - fpr) / (tpr - fpr)``), with a ``level`` interval.

    With ``bootstrap`` (:func:`operating_point_bootstrap` of the training data) the estimate (the median)
    and interval come from simulation (:func:`simulate_blast_fraction`): the interval carries the binomial
    uncertainty of this subject's called share *and* how much a new patient's recall and specificity vary
    around the training figures. Without it (bundles made before blastscan recorded it) the old interval
    is returned: the Wilson interval of ``q`` mapped through the correction, clipped to [0, 1], which
    ignores the uncertainty of ``recall`` and ``specificity`` (callers say so). Without usable rates
    (tpr - fpr <= 0.05) the plain share is returned.

    Returns ``(estimate, low, high)``; NaNs when ``n_cells`` is 0.
    """
    if n_cells <= 0:
        return float("nan"), float("nan"), float("nan")
    if bootstrap and bootstrap.get("beta"):
        draws = simulate_blast_fraction(n_called_all, n_cells, bootstrap, n_draws=n_draws,
                                        seed=bootstrap.get("seed", 0) if seed is None else seed)
        lo, est, hi = np.quantile(draws, [(1 - level) / 2, 0.5, 1 - (1 - level) / 2])
        return float(est), float(lo), float(hi)
    return _wilson_fraction(n_called_all, n_cells, recall, specificity, level)


def simulate_blast_fraction(n_called_all: int, n_cells: int, bootstrap: dict, *, n_draws: int = FRACTION_DRAWS,
                            seed: int = 0) -> np.ndarray:
    """Draws of a subject's blast fraction given ``n_called_all`` of its ``n_cells`` called ALL.

    Each draw picks one of the bootstrap's fitted Beta pairs (``bootstrap["beta"]``, see
    :func:`operating_point_bootstrap`), draws from them the recall and false-positive rate a new patient
    might have, draws the subject's true called share from the Jeffreys posterior Beta(k + 1/2, n - k + 1/2)
    of its count, and corrects it: ``clip((q - fpr) / (tpr - fpr), 0, 1)``. Patient-to-patient spread of
    the error rates (subject H10 of the dev data: far more cells called ALL than the other large healthy
    subject) is what a pooled rate hides, so it is sampled, not fixed. A draw whose ``tpr - fpr`` is below
    :data:`MIN_SEPARATION` says nothing about the fraction and draws it from U(0, 1).

    Reproducible: the generator is seeded by ``seed`` and the two counts.
    """
    beta = np.asarray(bootstrap["beta"], dtype=float).reshape(-1, 4)
    rng = np.random.default_rng([int(seed), int(n_called_all), int(n_cells)])
    pick = beta[rng.integers(0, len(beta), n_draws)]
    tpr = rng.beta(pick[:, 0], pick[:, 1])
    fpr = rng.beta(pick[:, 2], pick[:, 3])
    q = rng.beta(n_called_all + 0.5, n_cells - n_called_all + 0.5, n_draws)
    sep = tpr - fpr
    informative = sep >= MIN_SEPARATION
    f = np.where(informative, (q - fpr) / np.where(informative, sep, 1.0), rng.uniform(0, 1, n_draws))
    return np.clip(f, 0.0, 1.0)


def _wilson_fraction(n_called_all: int, n_cells: int, recall, specificity, level: float) -> tuple[float, float, float]:
    """The interval of bundles without an operating-point bootstrap (see :func:`blast_fraction`)."""
    q = n_called_all / n_cells
    z = _z(level)
    denom = 1 + z * z / n_cells
    centre = (q + z * z / (2 * n_cells)) / denom
    half = z * math.sqrt(q * (1 - q) / n_cells + z * z / (4 * n_cells * n_cells)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    tpr, fpr = recall, (None if specificity is None else 1 - specificity)
    if tpr is None or fpr is None or not np.isfinite(tpr) or not np.isfinite(fpr) or tpr - fpr <= 0.05:
        return q, lo, hi

    def adjust(v: float) -> float:
        return float(min(1.0, max(0.0, (v - fpr) / (tpr - fpr))))

    return adjust(q), adjust(lo), adjust(hi)


def _z(level: float) -> float:
    return float(norm.ppf(1 - (1 - level) / 2))
