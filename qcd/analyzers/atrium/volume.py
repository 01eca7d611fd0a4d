"""LA volume from a mask and its real spacing; BSA, LA volume index and its severity band.

* Volume = voxels x dz x dy x dx (dz = spacing between slice centres, never
  SliceThickness, never an assumed 1 mm), in mL.
* BSA by Mosteller: sqrt(H_cm * W_kg / 3600) m2, from PatientSize (0010,1020, metres)
  and PatientWeight (0010,1030, kg). A PatientSize above 3 is taken as centimetres (a
  common export mistake); heights outside 1.0-2.3 m and weights outside 20-300 kg are
  refused, as are missing or zero values: no index is then reported, with the reason.
* Bands: ASE/EACVI 2015 (Lang et al., JASE 2015) LAVI cut-offs: normal <= 34, mild
  35-41, moderate 42-48, severe > 48 mL/m2. The guideline states integer ranges with
  gaps (34|35, 41|42, 48|49) because LAVI is reported to the nearest integer; so a
  non-integer LAVI is banded as its nearest integer would be (halves rounding up),
  i.e. normal < 34.5 <= mild < 41.5 <= moderate < 48.5 <= severe. These are echo
  (biplane) cut-offs; a CMR volume runs larger, which the finding states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BSA_FORMULA = "Mosteller: BSA = sqrt(height_cm * weight_kg / 3600)"
HEIGHT_RANGE_M = (1.0, 2.3)
WEIGHT_RANGE_KG = (20.0, 300.0)
BANDS: tuple[tuple[str, float], ...] = (("normal", 34.5), ("mild", 41.5), ("moderate", 48.5))
"""(band, upper bound exclusive) in mL/m2; above the last bound: ``severe``."""
BAND_RULE = ("ASE/EACVI 2015 LAVI: normal <= 34, mild 35-41, moderate 42-48, severe > 48 "
             "mL/m2; non-integers banded as their nearest integer (halves up)")


def mask_volume_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Volume of a (z, y, x) mask in mL from the voxel spacing (dz, dy, dx) in mm."""
    if len(spacing) != 3 or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise ValueError(f"spacing must be three positive finite mm values, got {spacing}")
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


@dataclass(frozen=True)
class BodySize:
    """Height and weight accepted for a BSA, or the reason there is none."""

    height_m: float | None
    weight_kg: float | None
    reason: str = ""
    note: str = ""

    @property
    def bsa_m2(self) -> float | None:
        if self.height_m is None or self.weight_kg is None:
            return None
        return bsa_mosteller(self.height_m * 100.0, self.weight_kg)


def bsa_mosteller(height_cm: float, weight_kg: float) -> float:
    """Mosteller body surface area in m2."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def body_size(patient_size: object, patient_weight: object) -> BodySize:
    """Check PatientSize (m) and PatientWeight (kg) header values; see the module docstring."""
    height, weight = _number(patient_size), _number(patient_weight)
    missing = [n for n, v in (("PatientSize", height), ("PatientWeight", weight)) if not v]
    if missing:
        return BodySize(None, None, f"{' and '.join(missing)} missing or zero in the header")
    assert height is not None and weight is not None
    note = ""
    if height > 3:
        note = f"PatientSize {height:g} read as centimetres"
        height /= 100.0
    if not HEIGHT_RANGE_M[0] <= height <= HEIGHT_RANGE_M[1]:
        return BodySize(None, None, f"height {height:g} m outside {HEIGHT_RANGE_M[0]}-"
                                    f"{HEIGHT_RANGE_M[1]} m")
    if not WEIGHT_RANGE_KG[0] <= weight <= WEIGHT_RANGE_KG[1]:
        return BodySize(None, None, f"weight {weight:g} kg outside {WEIGHT_RANGE_KG[0]:g}-"
                                    f"{WEIGHT_RANGE_KG[1]:g} kg")
    return BodySize(height, weight, note=note)


def lavi_band(lavi: float) -> str:
    """ASE/EACVI 2015 band of a LAVI in mL/m2 (boundary rule in the module docstring)."""
    if not math.isfinite(lavi) or lavi < 0:
        raise ValueError(f"LAVI must be a finite non-negative number, got {lavi!r}")
    for band, upper in BANDS:
        if lavi < upper:
            return band
    return "severe"
