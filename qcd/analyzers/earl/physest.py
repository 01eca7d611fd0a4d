"""EARL class by physics: estimate the reconstruction, then measure a virtual NEMA phantom.

The CNNs (:mod:`qcd.analyzers.earl.model`) learn the class from edge images directly. This
method splits the question in two, each answerable on its own terms:

1. :class:`ParamNet` regresses the reconstruction's effective FWHM, PSF-like overshoot
   and noise COV from :func:`qcd.analyzers.earl.features.image_features` (a small MLP;
   the bundle stores its input and output normalisation, so one checksum covers all);
2. :func:`virtual_phantom` renders the IEC body phantom with those parameters on the
   series' own voxel grid and classifies its recoveries against the EARL bands, the
   very physics the training labels and ``qcd earl-phantom`` use. The estimator's own
   uncertainty (the residual spread the bundle records, ``estimator_sd``) is propagated
   by drawing parameter sets around the estimate: P(EARL) is the share of draws whose
   phantom is EARL-compliant, P(EARL2) the share of those that are EARL2.

So the class follows from measurable quantities a physicist can check, and the estimate
is reported with it (``earl_effective_fwhm``).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from qcd.analyzers.earl.features import N_FEATURES
from qcd.analyzers.earl.phantom import ReconParams, classify, expected_rc, rc_margin

ARCHITECTURE: Final = "physest"
PARAMS: Final = ("fwhm_mm", "overshoot", "cov")
"""ParamNet's outputs, in order (physical units)."""
LIMITS: Final = {"fwhm_mm": (2.0, 14.0), "overshoot": (0.0, 1.0), "cov": (0.002, 0.5)}
"""Estimates and draws are clipped into the range :class:`ReconParams` and the phantom
accept; far outside the training prior the estimate means little anyway."""
DRAWS: Final = 16
POSITIONS: Final = 2
NOISE_DRAWS: Final = 2
SEED: Final = 20261207
"""Fixed seed of the virtual phantom: the same series always gets the same answer."""
RNG_SCHEMES: Final = ("sequential", "per-draw")
"""How the draws get their random numbers (model.json ``phantom.rng``; see
:func:`virtual_phantom`)."""


class ParamNet(nn.Module):
    """(N, features) -> (N, 3) FWHM mm, overshoot, COV; normalisation held in buffers."""

    channels_last_ok = False  # no convolutions; float32 only
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, n_features: int = N_FEATURES, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(len(PARAMS)))
        self.register_buffer("y_std", torch.ones(len(PARAMS)))
        self.net = nn.Sequential(nn.Linear(n_features, width), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, len(PARAMS)))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs in units of the training targets' spread (what training fits)."""
        return self.net((x.float() - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 always: a few hundredths of a millimetre matter near a band edge
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.normalised(x) * self.y_std + self.y_mean


def as_params(row: torch.Tensor | np.ndarray | list[float]) -> dict[str, float]:
    """One output row -> clipped physical estimates by name."""
    values = [float(v) for v in (row.tolist() if hasattr(row, "tolist") else row)]
    return {k: min(max(v, LIMITS[k][0]), LIMITS[k][1]) for k, v in zip(PARAMS, values)}


@dataclass(frozen=True)
class PhantomVerdict:
    p_earl: float
    p_earl2: float
    """Share of the EARL-compliant draws that are EARL2; when no draw is compliant, the
    share of draws whose phantom lies nearer the EARL2 bands than the EARL1 bands (the
    question stage 2 asks, answered even where stage 1 said no)."""
    counts: dict[str, int]


def virtual_phantom(estimate: Mapping[str, float], voxel_mm: tuple[float, float, float],
                    sd: Mapping[str, float], draws: int = DRAWS, seed: int = SEED,
                    rng_scheme: str = "sequential", threads: int = 1) -> PhantomVerdict:
    """Classify the IEC phantom as a reconstruction with ``estimate`` would show it.

    ``draws`` parameter sets ~ N(estimate, sd) (clipped to :data:`LIMITS`), each measured
    over :data:`POSITIONS` sub-voxel placements x :data:`NOISE_DRAWS` noise draws as the
    training labels are (there 4 x 4). ``rng_scheme`` (:data:`RNG_SCHEMES`, recorded by
    the bundle): ``sequential`` draws everything from one generator, so the draws run one
    after another; ``per-draw`` gives each draw its own generator spawned from ``seed``,
    so they run on ``threads`` threads (the filters release the GIL) with the same answer
    whatever the thread count.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if rng_scheme not in RNG_SCHEMES:
        raise ValueError(f"unknown phantom rng scheme {rng_scheme!r}; valid: {RNG_SCHEMES}")
    grid = tuple(float(v) for v in voxel_mm)

    def one(rng: np.random.Generator) -> tuple[str, bool]:
        p = {k: float(np.clip(estimate[k] + float(sd.get(k, 0.0)) * rng.standard_normal(),
                              *LIMITS[k])) for k in PARAMS}
        params = ReconParams(grid, p["fwhm_mm"], p["overshoot"], p["cov"])  # type: ignore[arg-type]
        rc = expected_rc(params, rng, POSITIONS, NOISE_DRAWS)
        return classify(rc), rc_margin(rc, "EARL2") >= rc_margin(rc, "EARL1")

    if rng_scheme == "sequential":
        rng = np.random.default_rng(seed)
        outcomes = [one(rng) for _ in range(draws)]
    else:
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(draws)]
        if threads <= 1:
            outcomes = [one(r) for r in rngs]
        else:
            with ThreadPoolExecutor(min(threads, draws), thread_name_prefix="qcd-phantom") as ex:
                outcomes = list(ex.map(one, rngs))
    counts = {"clinical": 0, "EARL1": 0, "EARL2": 0}
    for label, _ in outcomes:
        counts[label] += 1
    nearer_earl2 = sum(int(near) for _, near in outcomes)
    earl = counts["EARL1"] + counts["EARL2"]
    p_earl2 = counts["EARL2"] / earl if earl else nearer_earl2 / draws
    return PhantomVerdict(earl / draws, p_earl2, counts)


def rng_scheme(spec: Mapping[str, Any]) -> str:
    """The bundle's phantom random-number scheme (bundles before 2.1.0: ``sequential``)."""
    scheme = str((spec.get("phantom") or {}).get("rng", "sequential"))
    if scheme not in RNG_SCHEMES:
        raise ValueError(f"bundle names unknown phantom rng scheme {scheme!r}")
    return scheme


def estimator_sd(spec: Mapping[str, Any]) -> dict[str, float]:
    """The bundle's recorded residual spread of each estimate (0 where missing)."""
    recorded = spec.get("estimator_sd") or {}
    return {k: float(recorded.get(k, 0.0)) for k in PARAMS}
