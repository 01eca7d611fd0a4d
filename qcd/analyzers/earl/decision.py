"""The two-stage decision from slice-averaged probabilities (pure, shared with training)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLASSES = ("clinical", "EARL1", "EARL2", "indeterminate")


@dataclass(frozen=True)
class Thresholds:
    """Operating points, stored in the bundle's model.json.

    Stage 1 calls a reconstruction EARL-compliant when the mean P(EARL) over its
    slices is >= ``stage1``. Stage 2 calls EARL2 when mean P(EARL2) >= ``earl2``
    and EARL1 when mean P(EARL1) >= ``earl1``; between the two the answer is
    ``indeterminate`` rather than forced.
    """

    stage1: float = 0.5
    earl2: float = 0.6
    earl1: float = 0.6

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Thresholds:
        t = spec.get("thresholds", {})
        return cls(float(t.get("stage1", 0.5)), float(t.get("earl2", 0.6)),
                   float(t.get("earl1", 0.6)))


def decide(p_earl: float, p_earl2: float | None, t: Thresholds) -> str:
    """One of ``clinical``, ``EARL1``, ``EARL2``, ``indeterminate``."""
    if p_earl < t.stage1:
        return "clinical"
    if p_earl2 is None:
        return "indeterminate"
    if p_earl2 >= t.earl2:
        return "EARL2"
    if 1.0 - p_earl2 >= t.earl1:
        return "EARL1"
    return "indeterminate"
