"""The analyzer protocol every analysis implements, and the data it exchanges.

An analyzer is one vertical slice: it says which series it accepts (rules on header
values), reads and preprocesses them (pure functions shared with ``training/``),
names the model bundle it needs, and turns model output into typed findings. It
knows nothing of DICOM networking, the database or outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydicom.dataset import Dataset

from qcd.bundles import Bundle


@dataclass(frozen=True)
class SeriesInput:
    """A complete series as the engine hands it to an analyzer."""

    series_uid: str
    modality: str | None
    paths: tuple[Path, ...]
    """Spooled Part 10 files, in instance-number order (analyzers re-sort by geometry)."""


@dataclass(frozen=True)
class Finding:
    """One typed result; stored as a row and later rendered into SR content."""

    name: str
    value_num: float | None = None
    value_text: str | None = None
    unit: str | None = None
    """UCUM code when numeric (e.g. ``ml``, ``ml/m2``, ``1`` for ratios)."""
    payload: Mapping[str, Any] = field(default_factory=dict)
    """JSON-serialisable details (probabilities, slices used, header evidence)."""


@dataclass(frozen=True)
class Acceptance:
    """Whether an analyzer can analyse a series, and if not, why (for the finding)."""

    ok: bool
    reason: str = ""


class Predictor(Protocol):
    """A loaded model behind the batching service (see :mod:`qcd.workers.inference`)."""

    def predict(self, x: Any) -> Any:
        """Run the model on a (n, ...) tensor; returns float32 CPU outputs."""
        ...


class Runtime(Protocol):
    """What the engine lends an analyzer at run time: shared, batched predictors."""

    def predictor(self, key: str, factory: Callable[[], Any]) -> Predictor:
        """The predictor for ``key`` (created once per process from ``factory``)."""
        ...


class Analyzer(Protocol):
    """What the engine needs from an analyzer; implementations live in the registry."""

    name: ClassVar[str]
    """Registry key and routing-rule name, e.g. ``earl``."""
    bundle: ClassVar[str | None]
    """Name of the model bundle under ``models/`` it needs, or None."""

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        """Decide from header values alone (no pixels) whether to analyse."""
        ...

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        """Run on the series; raise :class:`~qcd.errors.InferenceError` on bad input."""
        ...
