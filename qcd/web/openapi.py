"""The OpenAPI 3.1 description of the dashboard's JSON API (written by hand, served as JSON)."""

from __future__ import annotations

from typing import Any

from qcd import __version__

_PERIOD = [
    {"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                              "maximum": 3660, "default": 30},
     "description": "The last N days (ignored when from/to are given)."},
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "First day (UTC), inclusive."},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "Last day (UTC), inclusive."},
]
_STATION = {"name": "station", "in": "query", "schema": {"type": "string"},
            "description": "Only series of this StationName."}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": 1000}}
_UID = {"type": "string", "pattern": "^[0-9.]{1,64}$"}
_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_ERRORS = {"401": {"description": "Not authenticated"},
           "400": {"description": "Invalid parameter; the body names it"}}

_RATE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_ROW = {
    "type": "object",
    "description": "One site (station 'all') or one scanner in a period.",
    "properties": {
        "site": {"type": "string"}, "station": {"type": "string"},
        "series_analysed": {"type": "integer"}, "studies_analysed": {"type": "integer"},
        "failures": {"type": "integer"},
        "earl": {"type": "object", "properties": {
            "total": {"type": "integer"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "rates": {"type": "object", "additionalProperties": _RATE},
            "compliant_rate": {**_RATE, "description": "(EARL1 + EARL2) / all earl_class"}}},
        "motion": {"type": "object", "properties": {
            "total": {"type": "integer"}, "rescan": {"type": "integer"},
            "rescan_rate": _RATE}},
        "chest": {"type": "object", "properties": {
            "total": {"type": "integer"}, "urgent": {"type": "integer"},
            "urgent_rate": _RATE, "normal_rate": _RATE,
            "labels": {"type": "object", "description": "chest_<label> flagged at p >= 0.5"}}},
        "la_volume": {"type": "object", "description": "n, min, p25, median, p75, max (ml), "
                                                       "bins_ml, histogram"},
        "lavi_band": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}

_HARMONISATION = [
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "First study date, inclusive."},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "Last study date, inclusive."},
    {"name": "site", "in": "query", "schema": {"type": "string"},
     "description": "InstitutionName (wildcards * and ?, case-insensitive)."},
    {"name": "station", "in": "query", "schema": {"type": "string"},
     "description": "StationName (wildcards * and ?, case-insensitive)."},
    {"name": "series", "in": "query", "schema": {"enum": ["1"]},
     "description": "Also list every series with its own derivation."},
]
_STOW = {
    "summary": "STOW-RS: store Part 10 instances through the C-STORE path (operators; "
               "only with [http] stow_enabled)",
    "requestBody": {"required": True, "content": {
        'multipart/related; type="application/dicom"': {}}},
    "responses": {
        "200": {"description": "All stored (ReferencedSOPSequence)",
                "content": {"application/dicom+json": {}}},
        "202": {"description": "Some refused: FailedSOPSequence, FailureReason = qcd's "
                               "C-STORE status"},
        "409": {"description": "None stored"},
        "403": {"description": "Not an operator, or a session cookie without its "
                               "X-CSRF-Token"},
        "411": {"description": "Chunked body (send a Content-Length)"},
        "413": {"description": "Body above stow_max_bytes"},
        "415": {"description": "Not multipart/related; type=application/dicom"},
        **_ERRORS},
}


def _get(summary: str, params: list[dict[str, Any]] | None = None,
         ok: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": ok or _OK, **_ERRORS}}}


def openapi() -> dict[str, Any]:
    """The document served at ``/api/openapi.json``."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "qcd dashboard API", "version": __version__,
                 "description": "Aggregates and records of the qcd quality-control daemon. "
                                "No patient name, ID or birth date is stored or returned. "
                                "Authenticate with the session cookie of the web login, "
                                "HTTP Basic credentials of a local user, or the reverse "
                                "proxy's user header (proxy mode)."},
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "qcd_session"},
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {"SiteRow": _ROW},
        },
        "security": [{"session": []}, {"basic": []}],
        "paths": {
            "/api/me": _get("The authenticated user and role"),
            "/api/sites": _get("Compliance table: per site, with per-scanner rows", _PERIOD, {
                "description": "OK", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "period": {"type": "object"},
                        "sites": {"type": "array", "items": {"allOf": [
                            {"$ref": "#/components/schemas/SiteRow"},
                            {"type": "object", "properties": {"stations": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/SiteRow"}}}}]}}}}}}}),
            "/api/sites.csv": _get("The compliance table as CSV (one line per scanner, then "
                                   "the site total)", _PERIOD,
                                   {"description": "CSV", "content": {"text/csv": {}}}),
            "/api/trends": _get("Per day (or week) and site: series analysed, EARL-compliant share, "
                                "rescan and urgent rates",
                                [*_PERIOD, {"name": "site", "in": "query",
                                            "schema": {"type": "string"}},
                                 {"name": "bucket", "in": "query",
                                  "schema": {"enum": ["day", "week"], "default": "day"},
                                  "description": "week: points named by their Monday"}]),
            "/api/stations": _get("Station names seen"),
            "/api/series": _get("Newest series with jobs and current findings",
                                [_STATION, _LIMIT]),
            "/api/alerts": _get("Alerts, newest first", [
                {"name": "state", "in": "query",
                 "schema": {"enum": ["OPEN", "ACKNOWLEDGED", "ALL"], "default": "OPEN"}},
                _STATION, _LIMIT]),
            "/api/alerts/{alert_id}/ack": {"post": {
                "summary": "Acknowledge an OPEN alert (operators only)",
                "parameters": [{"name": "alert_id", "in": "path", "required": True,
                                "schema": {"type": "integer"}},
                               {"name": "X-CSRF-Token", "in": "header", "schema": {
                                   "type": "string"}, "description": "Required with a "
                                "session cookie (shown on every page); not with Basic auth"}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["comment"], "properties": {
                        "name": {"type": "string", "maxLength": 64,
                                 "description": "Who acknowledges (default: the user)"},
                        "comment": {"type": "string", "maxLength": 2000}}}}}},
                "responses": {"200": _OK, "403": {"description": "Not an operator, or bad "
                                                                 "CSRF token"},
                              "404": {"description": "No such alert"},
                              "409": {"description": "Already acknowledged"}, **_ERRORS}}},
            "/api/studies/{study_uid}": {"get": {
                "summary": "A study: series, jobs, findings with payloads, alerts, viewer "
                           "links",
                "parameters": [{"name": "study_uid", "in": "path", "required": True,
                                "schema": _UID}],
                "responses": {"200": _OK, "404": {"description": "No such study"},
                              **_ERRORS}}},
            "/api/harmonisation": _get(
                "EARL harmonisation report per site and scanner (qcd.audit.report): class "
                "counts and shares, header evidence, median extra Gaussian FWHM to EARL1/EARL2 "
                "for the non-compliant series, and how it is derived", _HARMONISATION),
            "/api/harmonisation.csv": _get(
                "The harmonisation report as CSV (the columns of `qcd audit --report`; "
                "series=1: one line per series, as `--series-report`)", _HARMONISATION,
                {"description": "CSV", "content": {"text/csv": {}}}),
            "/dicom-web/studies": {"post": _STOW},
            "/dicom-web/studies/{study_uid}": {"post": {
                **_STOW, "parameters": [{"name": "study_uid", "in": "path", "required": True,
                                         "schema": _UID}]}},
            "/api/openapi.json": _get("This document (no authentication)"),
        },
    }
