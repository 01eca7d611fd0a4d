"""SUV (body weight) from the PET header, or a clear reason why it cannot be had.

SUVbw = activity concentration [Bq/mL] / (injected dose decay-corrected to the
images' reference time [Bq] / body weight [g]). The reference time follows Decay
Correction: START -> series (or acquisition) start, ADMIN -> administration (no
correction), NONE -> not supported (each slice would need its own time).
"""

from __future__ import annotations

import datetime as dt
import math

from pydicom.dataset import Dataset

from qcd.errors import InferenceError


class SuvUnavailable(InferenceError):
    """The header cannot support an SUV; the message says which element is missing."""


def _time(date: str | None, time: str | None) -> dt.datetime:
    if not date or not time:
        raise SuvUnavailable("acquisition or injection date/time missing")
    t = str(time).split(".")[0].ljust(6, "0")
    try:
        return dt.datetime.strptime(str(date)[:8] + t[:6], "%Y%m%d%H%M%S")
    except ValueError:
        raise SuvUnavailable(f"unreadable date/time {date} {time}") from None


def suv_factor(ds: Dataset) -> float:
    """Multiply Bq/mL voxel values by this to get SUVbw.

    Raises
    ------
    SuvUnavailable
        Units not BQML, no weight, no dose or half-life, unsupported decay correction.
    """
    units = str(ds.get("Units", "")).upper()
    if units != "BQML":
        raise SuvUnavailable(f"Units is '{units or 'missing'}', not BQML")
    weight = float(ds.get("PatientWeight", 0) or 0)
    if weight <= 0:
        raise SuvUnavailable("PatientWeight missing")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SuvUnavailable("RadiopharmaceuticalInformationSequence missing")
    info = seq[0]
    dose = float(info.get("RadionuclideTotalDose", 0) or 0)
    half_life = float(info.get("RadionuclideHalfLife", 0) or 0)
    if dose <= 0 or half_life <= 0:
        raise SuvUnavailable("RadionuclideTotalDose or RadionuclideHalfLife missing")
    correction = str(ds.get("DecayCorrection", "")).upper()
    if correction == "ADMIN":
        decayed = dose
    elif correction == "START":
        if "RadiopharmaceuticalStartDateTime" in info:
            stamp = str(info.RadiopharmaceuticalStartDateTime)
            injected = _time(stamp[:8], stamp[8:])
        else:
            injected = _time(ds.get("SeriesDate") or ds.get("AcquisitionDate"),
                             info.get("RadiopharmaceuticalStartTime"))
        start = _time(ds.get("SeriesDate") or ds.get("AcquisitionDate"),
                      ds.get("SeriesTime") or ds.get("AcquisitionTime"))
        elapsed = (start - injected).total_seconds()
        if elapsed < 0:
            elapsed += 86400  # injection before midnight, scan after
        if not 0 <= elapsed < 86400:
            raise SuvUnavailable(f"implausible injection-to-scan time {elapsed:.0f} s")
        decayed = dose * math.exp(-math.log(2) * elapsed / half_life)
    else:
        raise SuvUnavailable(f"DecayCorrection '{correction or 'missing'}' not supported")
    return weight * 1000.0 / decayed
