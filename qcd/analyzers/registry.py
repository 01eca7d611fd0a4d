"""The analyzers this installation runs, by routing name. Adding one touches only this file."""

from __future__ import annotations

from collections.abc import Mapping

from qcd.analyzers.base import Analyzer
from qcd.analyzers.atrium.analyzer import AtriumAnalyzer
from qcd.analyzers.chest.analyzer import ChestAnalyzer
from qcd.analyzers.earl.analyzer import EarlAnalyzer
from qcd.analyzers.motion.analyzer import MotionAnalyzer

REGISTRY: Mapping[str, Analyzer] = {
    EarlAnalyzer.name: EarlAnalyzer(),
    ChestAnalyzer.name: ChestAnalyzer(),
    MotionAnalyzer.name: MotionAnalyzer(),
    AtriumAnalyzer.name: AtriumAnalyzer(),
}
