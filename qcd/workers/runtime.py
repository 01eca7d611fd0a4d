"""The runtime the engine lends analyzers: one batching predictor per model and device.

Several worker threads analysing different series share each predictor, so their
slices are batched together on the GPU (or CPU) by :mod:`qcd.workers.inference`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qcd.analyzers.base import Predictor
from qcd.workers.inference import InferenceSettings, PredictorPool


class LocalRuntime:
    """Predictors keyed by model, created once per process on the configured device."""

    def __init__(self, settings: InferenceSettings | None = None) -> None:
        self.pool = PredictorPool(settings or InferenceSettings())
        if self.pool.device.type == "cuda":
            import torch

            # TF32 convolutions round inputs to a 10-bit mantissa, like fp16; models that
            # read noise texture (EARL) then disagree with the CPU. Full float32 instead.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    @property
    def device(self) -> Any:
        return self.pool.device

    def predictor(self, key: str, factory: Callable[[], Any]) -> Predictor:
        return self.pool.get(f"{key}@{self.pool.device}", factory)

    def close(self) -> None:
        self.pool.close_all()
