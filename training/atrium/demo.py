"""Write a simulated cardiac MR volume as a DICOM MR series (demo, tests, benchmarks).

Slices are axial (ImageOrientationPatient 1\\0\\0\\0\\1\\0; rows run anterior to
posterior, columns right to left as in LPS), 1.25 mm apart. Instance numbers and file
names are shuffled so a reader has to order slices by ImagePositionPatient. The header
carries PatientSize (m) and PatientWeight (kg) from the simulated body unless told
otherwise. Fictitious patient; nothing here is real data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from training.atrium.simulate import SimConfig, simulate_case

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DEMO_CONFIG = SimConfig(nz=64, sizes=(128,))
"""Small enough for tests (64 slices of 128 x 128, 2 MB), large enough for any LA."""


@dataclass(frozen=True)
class DemoCase:
    paths: list[Path]
    """Files in shuffled order."""
    label: np.ndarray
    """(z, y, x) bool truth, z from feet to head (ImagePositionPatient order)."""
    spacing: tuple[float, float, float]
    params: dict[str, Any]


_ABSENT = object()


def write_case(out_dir: str | Path, seed: int, *, config: SimConfig = DEMO_CONFIG,
               height_m: Any = _ABSENT, weight_kg: Any = _ABSENT,
               description: str = "Cardiac LA 3D bSSFP", study_uid: str | None = None,
               device: str = "cpu") -> DemoCase:
    """Simulate case ``seed`` and write it; ``height_m``/``weight_kg`` None omits the tag."""
    case = simulate_case(seed, device, config)
    image = case.image.cpu().numpy()
    label = case.label.cpu().numpy()
    height = case.params["height_m"] if height_m is _ABSENT else height_m
    weight = case.params["weight_kg"] if weight_kg is _ABSENT else weight_kg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.round(image / max(float(image.max()), 1e-6) * 4000).astype(np.int16)
    nz, ny, nx = image.shape
    dz, dy, dx = case.spacing
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    numbers = rng.permutation(nz) + 1
    today = dt.date.today().strftime("%Y%m%d")
    paths = []
    for k in range(nz):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID = "QCD^DEMO", "QCD-DEMO-0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        if height is not None:
            ds.PatientSize = f"{float(height):.3f}"
        if weight is not None:
            ds.PatientWeight = f"{float(weight):.1f}"
        ds.AccessionNumber = "QCDDEMO1"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, int(numbers[k])
        ds.Modality, ds.BodyPartExamined = "MR", "HEART"
        ds.Manufacturer, ds.ManufacturerModelName = "QCD Synthetic", "bSSFP simulator"
        ds.StationName, ds.InstitutionName = "QCDSIM1", "qcd demo site"
        ds.SeriesDescription = description
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SS", "3D"
        ds.SequenceName = "*tfi3d1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImagePositionPatient = [-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.SpacingBetweenSlices = dz
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = pixels[k].tobytes()
        path = out / f"MR_{int(numbers[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    order = rng.permutation(nz)
    return DemoCase([paths[i] for i in order], label, case.spacing, case.params)


def write_demo_series(out: Path, seed: int = 7) -> tuple[list[Path], str]:
    """One demo volume for ``tests/bench/bench_latency.py --analyzer atrium``."""
    case = write_case(out, seed)
    lavi = case.params.get("lavi_ml_m2")
    what = (f"{len(case.paths)} slices of {DEMO_CONFIG.sizes[0]}x{DEMO_CONFIG.sizes[0]} at "
            f"{case.spacing[0]:.2f} mm, simulated cardiac MR"
            + (f" (LAVI {float(lavi):.0f} ml/m2)" if lavi is not None else ""))
    return case.paths, what


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    paths, what = write_demo_series(args.out, args.seed)
    print(f"wrote {what} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
