"""Small analyzers for engine tests: real code paths, trivial science."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.bundles import Bundle
from qcd.errors import InferenceError
from qcd.hashing import sha256_file


class CountAnalyzer:
    """Counts instances and averages pixels; needs the ``toy`` bundle (a scale factor)."""

    name: ClassVar[str] = "count"
    bundle: ClassVar[str | None] = "toy"

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        if any(h.get("Modality") != "PT" for h in headers):
            return Acceptance(False, "not a PET series")
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        assert bundle is not None
        scale = float(bundle.spec["input"]["scale"])
        mean = float(np.mean([pydicom.dcmread(p).pixel_array.mean() for p in series.paths]))
        return [Finding("instances", value_num=len(series.paths), unit="1"),
                Finding("scaled_mean", value_num=mean * scale, unit="1",
                        payload={"slices": len(series.paths)})]


class FlakyAnalyzer:
    """Fails ``failures`` times, then succeeds (retry/back-off tests)."""

    name: ClassVar[str] = "flaky"
    bundle: ClassVar[str | None] = None

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        self.calls += 1
        if self.calls <= self.failures:
            raise InferenceError(f"flaky failure {self.calls}")
        return [Finding("ok", value_text="yes")]


def write_toy_bundle(root: Path, version: str = "1.0", scale: float = 2.0) -> Path:
    """A complete bundle: model.json, MODEL_CARD.md and a weights file with its sha256."""
    path = root / "toy" / version
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    spec = {"name": "toy", "version": version, "weights": "weights.bin",
            "sha256": sha256_file(path / "weights.bin"), "labels": ["x"],
            "input": {"scale": scale}, "preprocessing": "1"}
    (path / "model.json").write_text(json.dumps(spec))
    (path / "MODEL_CARD.md").write_text("# toy\nTest bundle, no real model.\n")
    return path
