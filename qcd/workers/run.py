"""The one path an analysis takes, for the daemon's workers and ``qcd analyze`` alike."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from qcd.analyzers.base import Analyzer, Finding, Runtime, SeriesInput
from qcd.bundles import Bundle, load_bundle
from qcd.errors import InferenceError

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    findings: list[Finding]
    bundle: Bundle | None


class BundleCache:
    """Verified bundles by name, loaded once per process (checksums are not free): the
    version ``versions`` pins, else the newest."""

    def __init__(self, root: str | Path, versions: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.versions = dict(versions or {})
        self._bundles: dict[str, Bundle] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Bundle:
        with self._lock:
            if name not in self._bundles:
                self._bundles[name] = load_bundle(self.root, name, self.versions.get(name))
            return self._bundles[name]


def read_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """Headers only (no pixel data), for acceptance rules."""
    try:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    except Exception as exc:  # the spool holds checked files; this means disk trouble
        raise InferenceError(f"cannot read series headers: {exc}") from exc


def run_analyzer(
    analyzer: Analyzer, series: SeriesInput, bundles: BundleCache, runtime: Runtime
) -> Outcome:
    """Accept or decline the series, load the bundle, analyse.

    A declined series yields one ``not_applicable`` finding with the reason rather
    than an error: the operator sees why nothing was measured.

    Raises
    ------
    InferenceError
        Unreadable series, a missing or corrupt bundle, or the analyzer's own error.
    """
    if not series.paths:
        raise InferenceError(f"series {series.series_uid} has no instances")
    verdict = analyzer.accepts(read_headers(series.paths))
    if not verdict.ok:
        return Outcome([Finding("not_applicable", value_text=verdict.reason[:128])], None)
    bundle = bundles.get(analyzer.bundle) if analyzer.bundle else None
    findings = analyzer.analyze(series, bundle, runtime)
    return Outcome(list(findings), bundle)
