"""The runtime the engine lends analyzers: one shared predictor per model and device."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from qcd.analyzers.base import Predictor


class _DirectPredictor:
    """Runs the model in the caller's thread (placeholder until batching is wired)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self._lock = threading.Lock()

    def predict(self, x: Any) -> Any:
        with self._lock, torch.inference_mode():
            return self.model(x.to(self.device)).float().cpu()


class LocalRuntime:
    """Predictors keyed by model, created once per process, on ``device``."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, key: str, factory: Callable[[], Any]) -> Predictor:
        with self._lock:
            if key not in self._predictors:
                self._predictors[key] = _DirectPredictor(factory(), self.device)
            return self._predictors[key]

    def close(self) -> None:
        self._predictors.clear()
