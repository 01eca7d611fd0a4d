"""Series geometry: order by position, real spacing, bad series refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from qcd.analyzers.earl.suv import suv_factor
from qcd.analyzers.volume import load_volume
from qcd.errors import InferenceError
from qcd.synth import write_pet_series


@pytest.fixture
def pet(tmp_path: Path) -> tuple[np.ndarray, list[Path]]:
    rng = np.random.default_rng(0)
    suv = rng.uniform(0.5, 5.0, (12, 16, 20)).astype(np.float32)
    return suv, write_pet_series(suv, (3.27, 4.0, 4.0), tmp_path)


def test_shuffled_files_come_back_in_position_order_with_suv(
    pet: tuple[np.ndarray, list[Path]]
) -> None:
    suv, paths = pet
    vol = load_volume(sorted(paths))  # names are shuffled relative to positions
    assert vol.spacing == pytest.approx((3.27, 4.0, 4.0))
    back = vol.array * suv_factor(vol.first)  # index 0 = lowest z (feet), as written
    assert np.allclose(back, suv, rtol=1e-3, atol=1e-3)


def _edit(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_mixed_orientation_is_refused(pet: tuple[np.ndarray, list[Path]]) -> None:
    _, paths = pet
    _edit(paths[3], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(InferenceError, match="mixes image orientations"):
        load_volume(paths)


def test_uneven_or_duplicate_spacing_is_refused(pet: tuple[np.ndarray, list[Path]]) -> None:
    _, paths = pet
    ds = pydicom.dcmread(paths[0])
    _edit(paths[1], ImagePositionPatient=list(ds.ImagePositionPatient))
    with pytest.raises(InferenceError, match="share one position"):
        load_volume(paths)


def test_missing_geometry_is_refused(pet: tuple[np.ndarray, list[Path]]) -> None:
    _, paths = pet
    ds = pydicom.dcmread(paths[2])
    del ds.ImagePositionPatient
    ds.save_as(paths[2])
    with pytest.raises(InferenceError, match="without ImagePositionPatient"):
        load_volume(paths)
