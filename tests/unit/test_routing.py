"""Routing rules: declarative matching of series to analyzer names."""

from __future__ import annotations

from qcd.config import DEFAULT_ROUTES, RouteRule
from qcd.routing import SeriesFacts, route


def facts(modality: str, body: str = "", manufacturer: str = "", desc: str = "") -> SeriesFacts:
    return SeriesFacts(modality, body, manufacturer, desc)


def test_default_routes() -> None:
    assert route(DEFAULT_ROUTES, facts("PT", "WHOLEBODY", "Siemens", "PET WB")) == ["earl"]
    assert route(DEFAULT_ROUTES, facts("CT", "RADIUS", "SCANCO Medical AG")) == ["motion"]
    assert route(DEFAULT_ROUTES, facts("CT", "CHEST", "GE")) == []
    assert route(DEFAULT_ROUTES, facts("DX", "CHEST")) == ["chest"]
    assert route(DEFAULT_ROUTES, facts("CR", "Thorax")) == ["chest"]
    assert route(DEFAULT_ROUTES, facts("DX", "KNEE")) == []
    assert route(DEFAULT_ROUTES, facts("MR", "HEART", "", "LA 3D bSSFP")) == ["atrium"]
    assert route(DEFAULT_ROUTES, facts("MR", "BRAIN", "", "T1 MPRAGE")) == []


def test_every_matching_rule_yields_one_job_in_order() -> None:
    rules = (
        RouteRule("b", modalities=("CT",)),
        RouteRule("a", series_description="recon"),
        RouteRule("b", manufacturer="x"),
    )
    assert route(rules, facts("CT", "", "x", "Recon 2")) == ["b", "a"]


def test_missing_header_values_match_only_empty_patterns() -> None:
    empty = SeriesFacts(None, None, None, None)
    assert route((RouteRule("any"),), empty) == ["any"]
    assert route((RouteRule("ct", modalities=("CT",)),), empty) == []
