"""``qcd analyze PATH``: run the applicable analyzers on a DICOM folder, offline.

Series are grouped and routed exactly as in the daemon, and each analysis goes
through :func:`qcd.workers.run.run_analyzer`, the workers' own path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from qcd.analyzers.base import Analyzer, Finding, SeriesInput
from qcd.bundles import models_root
from qcd.config import Settings
from qcd.errors import IngestError, InferenceError
from qcd.importer import iter_files
from qcd.ingest.filemeta import split_part10
from qcd.ingest.header import DEFAULT_MAX_INFLATED, parse_header
from qcd.routing import SeriesFacts, route
from qcd.workers.run import BundleCache, run_analyzer
from qcd.workers.runtime import LocalRuntime


@dataclass
class AnalysisRow:
    """One (series, analyzer) result."""

    series_uid: str
    modality: str | None
    series_description: str | None
    analyzer: str
    status: str
    """``done``, ``failed``, ``unavailable`` (not implemented here)."""
    error: str = ""
    findings: list[Finding] = field(default_factory=list)
    model: str = ""


def group_series(paths: Iterable[str | Path], max_inflated: int = DEFAULT_MAX_INFLATED,
                 ) -> tuple[dict[str, list[Path]], list[str]]:
    """Files by Series Instance UID (checked like ingest, with its inflate limit), and the
    files skipped."""
    groups: dict[str, list[tuple[int, str, Path]]] = defaultdict(list)
    skipped: list[str] = []
    for path in iter_files(paths):
        try:
            data = path.read_bytes()
            meta, _ = split_part10(data)
            h = parse_header(data, str(meta.MediaStorageSOPClassUID),
                             str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID),
                             max_inflated)
        except IngestError as exc:
            skipped.append(f"{path}: 0x{exc.status:04X} {exc.message}")
            continue
        except OSError as exc:
            skipped.append(f"{path}: {exc.strerror}")
            continue
        groups[h.series_uid].append((h.instance_number or 0, h.sop_uid, path))
    return {uid: [p for *_, p in sorted(items)] for uid, items in groups.items()}, skipped


def analyze_paths(
    paths: Iterable[str | Path], settings: Settings, registry: Mapping[str, Analyzer],
) -> tuple[list[AnalysisRow], list[str]]:
    """Route every series found under ``paths`` and run the analyzers that apply."""
    bundles = BundleCache(models_root(settings.workers.models_path),
                          settings.workers.bundle_versions)
    runtime = LocalRuntime(settings.inference)
    rows: list[AnalysisRow] = []
    series, skipped = group_series(paths, settings.ingest.max_inflated_bytes)
    for uid, files in series.items():
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        modality = str(ds.get("Modality", "")) or None
        desc = str(ds.get("SeriesDescription", "")) or None
        facts = SeriesFacts(modality, ds.get("BodyPartExamined"), ds.get("Manufacturer"), desc)
        for name in route(settings.routing.rules, facts):
            row = AnalysisRow(uid, modality, desc, name, "unavailable")
            analyzer = registry.get(name)
            if analyzer is None:
                row.error = f"analyzer '{name}' is not implemented in this installation"
            else:
                try:
                    outcome = run_analyzer(analyzer, SeriesInput(uid, modality, tuple(files)),
                                           bundles, runtime)
                    row.status, row.findings = "done", outcome.findings
                    if outcome.bundle:
                        b = outcome.bundle
                        row.model = f"{b.name}/{b.version} sha256:{b.sha256[:12]}"
                except InferenceError as exc:
                    row.status, row.error = "failed", str(exc)
            rows.append(row)
    runtime.close()
    return rows, skipped
