"""Declarative routing of completed series to analyzer names."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from qcd.config import RouteRule


@dataclass(frozen=True)
class SeriesFacts:
    """The header values rules may look at."""

    modality: str | None
    body_part: str | None
    manufacturer: str | None
    series_description: str | None


def rule_matches(rule: RouteRule, facts: SeriesFacts) -> bool:
    """True when every non-empty field of ``rule`` matches ``facts``."""
    if rule.modalities and (facts.modality or "").upper() not in rule.modalities:
        return False
    for pattern, value in (
        (rule.body_part, facts.body_part),
        (rule.manufacturer, facts.manufacturer),
        (rule.series_description, facts.series_description),
    ):
        if pattern and not re.search(pattern, value or "", re.IGNORECASE):
            return False
    return True


def route(rules: Iterable[RouteRule], facts: SeriesFacts) -> list[str]:
    """Analyzer names for a series, in rule order, without duplicates."""
    names: list[str] = []
    for rule in rules:
        if rule.analyzer not in names and rule_matches(rule, facts):
            names.append(rule.analyzer)
    return names
