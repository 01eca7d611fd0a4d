"""From a scan's cumulative probabilities to grade, rescan and review (pure, shared with training).

Operators disagree on up to 30 % of motion grades, mostly between neighbours, so the
decision says when it is unsure instead of forcing an answer: ``review`` is raised when
the probability of the decoded grade is low, or when the scan sits on the rescan
boundary (P(grade >= rescan grade) inside the borderline band, i.e. "3 or 4?").
Rescan is recommended at grade >= ``rescan_grade``, or already when P(grade >=
``rescan_grade``) >= ``rescan_probability`` (missing a needed rescan costs a recall
visit; an extra rescan costs a minute while the patient is still there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcd.analyzers.motion.model import N_GRADES, decode


@dataclass(frozen=True)
class Thresholds:
    """Operating points, from the bundle's ``model.json`` ``thresholds`` (site-configurable)."""

    rescan_grade: int = 4
    """Rescan is recommended at this grade or above (Whittier 2020: repeat when > 3)."""
    rescan_probability: float = 0.5
    """Rescan also when P(grade >= rescan_grade) reaches this (0.5 = "grade >= rescan_grade"
    exactly; a bundle may lower it for sensitivity, chosen on validation scans)."""
    min_confidence: float = 0.5
    """Review when P(decoded grade) is below this."""
    borderline_low: float = 0.3
    borderline_high: float = 0.7
    """Review when P(grade >= rescan_grade) lies in [low, high]."""

    def __post_init__(self) -> None:
        if not 2 <= self.rescan_grade <= N_GRADES:
            raise ValueError(f"rescan_grade must be 2-{N_GRADES}, got {self.rescan_grade}")
        if not 0 < self.rescan_probability <= 0.5:
            raise ValueError(f"rescan_probability must be in (0, 0.5], got "
                             f"{self.rescan_probability}")
        if not 0 <= self.borderline_low <= self.borderline_high <= 1:
            raise ValueError("borderline band must satisfy 0 <= low <= high <= 1, got "
                             f"{self.borderline_low}, {self.borderline_high}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Thresholds:
        t = spec.get("thresholds", {}) or {}
        d = cls()
        return cls(int(t.get("rescan_grade", d.rescan_grade)),
                   float(t.get("rescan_probability", d.rescan_probability)),
                   float(t.get("min_confidence", d.min_confidence)),
                   float(t.get("borderline_low", d.borderline_low)),
                   float(t.get("borderline_high", d.borderline_high)))


@dataclass(frozen=True)
class Decision:
    grade: int
    probabilities: tuple[float, ...]
    """P(grade = 1..5)."""
    confidence: float
    """P(decoded grade)."""
    expected_grade: float
    p_rescan: float
    """P(grade >= rescan_grade)."""
    rescan: bool
    review_reason: str | None

    @property
    def review(self) -> bool:
        return self.review_reason is not None


def decide(cumulative: torch.Tensor, t: Thresholds) -> Decision:
    """``cumulative`` = (4,) scan-level P(grade > k), k = 1..4."""
    grade, probs, expected = decode(cumulative)
    confidence = float(probs[grade - 1])
    p_rescan = float(cumulative[t.rescan_grade - 2])
    reasons = []
    if t.borderline_low <= p_rescan <= t.borderline_high:
        reasons.append(f"borderline {t.rescan_grade - 1} vs {t.rescan_grade}: "
                       f"P(grade >= {t.rescan_grade}) = {p_rescan:.2f}")
    if confidence < t.min_confidence:
        reasons.append(f"low confidence {confidence:.2f} < {t.min_confidence:.2f}")
    return Decision(grade, tuple(round(float(p), 4) for p in probs), confidence, expected,
                    p_rescan, grade >= t.rescan_grade or p_rescan >= t.rescan_probability,
                    "; ".join(reasons) or None)
