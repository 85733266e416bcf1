"""Evaluation settings as one validated object, shared by compare, train and export: the one place of every
evaluation default (the 0.90 ALL-recall target among them), of the threshold rules' wording and of their check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from blastscan.errors import BlastscanError

__all__ = ["RULES", "rule_text", "check_rule", "EvalSettings"]

#: The threshold rules and how reports, bundles and run records describe them.
RULES = {"recall": "the highest threshold reaching ALL recall ≥ {target:.2f}",
         "f1": "the threshold with the best weighted F1"}


def rule_text(rule: str, target_recall: float | None = None, *, on: str = "") -> str:
    """The rule in words, e.g. ``"the highest threshold reaching ALL recall ≥ 0.90"`` (+ ``" on <on>"``);
    ``target_recall`` is needed by the ``"recall"`` rule only."""
    text = RULES[rule].format(target=float(target_recall)) if rule == "recall" else RULES[rule]
    return f"{text} on {on}" if on else text


def check_rule(rule: str, target_recall: float) -> None:
    """Raise ``BlastscanError`` (naming the command-line option) for an unknown rule or a target ALL recall
    outside (0, 1]."""
    if rule not in RULES:
        raise BlastscanError("--threshold", f"unknown rule '{rule}'; choose {' or '.join(RULES)}")
    if not 0 < float(target_recall) <= 1:
        raise BlastscanError("--target-recall", f"must be in (0, 1] (got {target_recall})")


@dataclass(frozen=True)
class EvalSettings:
    """How a model is evaluated and how its decision threshold is chosen.

    Parameters
    ----------
    folds : int
        Outer subject-disjoint folds (fewer when a class has fewer subject groups; reported).
    seed : int
        Seeds folds, models and the bootstrap.
    threshold_rule : {"recall", "f1"}
        ``"recall"``: the highest threshold reaching ``target_recall`` for ALL on training out-of-fold
        predictions; ``"f1"``: the best weighted F1 there.
    target_recall : float
        ALL recall targeted by the ``"recall"`` rule, in (0, 1].
    inner_folds : int
        Folds of the inner subject-disjoint CV that chooses thresholds (0: none, threshold 0.5).
    leaky_folds : int
        Folds of the per-image (leaky) split shown for comparison; 0 skips it.
    n_boot : int
        Subject-bootstrap resamples for the 95% intervals; 0 skips them.
    per_image_split : bool
        Evaluate although labelled images lack a subject (each its own split group); every output is then
        labelled leaky. False (the default) refuses such data (``--per-image-split``).

    Raises
    ------
    BlastscanError
        On construction, naming the command-line option of the bad value.
    """

    folds: int = 5
    seed: int = 0
    threshold_rule: str = "recall"
    target_recall: float = 0.90
    inner_folds: int = 3
    leaky_folds: int = 3
    n_boot: int = 1000
    per_image_split: bool = False

    def __post_init__(self):
        check_rule(self.threshold_rule, self.target_recall)
        for opt, value in (("--inner-folds", self.inner_folds), ("--leaky-folds", self.leaky_folds)):
            if value != 0 and value < 2:
                raise BlastscanError(opt, f"must be 0 (off) or at least 2 (got {value})")
        if self.n_boot < 0:
            raise BlastscanError("--bootstrap", f"must be >= 0 (got {self.n_boot})")
        if self.folds < 2:
            raise BlastscanError("--folds", f"must be at least 2 (got {self.folds})")

    @property
    def other_rule(self) -> str:
        """The rule not chosen (reported beside the headline)."""
        return "f1" if self.threshold_rule == "recall" else "recall"

    def rule_text(self, on: str = "") -> str:
        """The threshold rule in words."""
        return rule_text(self.threshold_rule, self.target_recall, on=on)

    def threshold_record(self) -> dict[str, Any]:
        """``{"rule", "target_recall"}`` as run records and bundles store it."""
        return {"rule": self.threshold_rule, "target_recall": float(self.target_recall)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_run(cls, run: Mapping[str, Any], **overrides: Any) -> "EvalSettings":
        """The settings recorded in a compare run's ``run.json`` (missing entries take the defaults)."""
        thr = run.get("threshold") or {}
        base = {"seed": int(run.get("seed", cls.seed)), "threshold_rule": thr.get("rule", cls.threshold_rule),
                "target_recall": float(thr.get("target_recall", cls.target_recall)),
                "per_image_split": bool(run.get("leaky_split"))}
        return cls(**{**base, **overrides})
