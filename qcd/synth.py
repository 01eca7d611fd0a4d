"""Synthetic multi-series studies for the demo, tests and benchmarks.

The images are smooth phantoms with seeded noise, not anatomy; their headers are
complete enough for routing (modality, body part, manufacturer, description). The
patient is fictitious (``QCD^DEMO``): nothing here is real patient data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from qcd.ingest.filemeta import IMPLEMENTATION_CLASS_UID

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}
COMPRESSIONS: dict[str, UID] = {
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "deflate": DeflatedExplicitVRLittleEndian,
}


@dataclass(frozen=True)
class SeriesSpec:
    """One series to generate."""

    modality: str
    count: int
    description: str
    body_part: str = ""
    manufacturer: str = "QCD Synthetic"
    compression: str = ""
    """'' (Explicit VR LE), or one of COMPRESSIONS' keys."""


DEFAULT_STUDY: tuple[SeriesSpec, ...] = (
    SeriesSpec("CT", 200, "CT chest abdomen", "CHEST"),
    SeriesSpec("CT", 60, "CT recon RLE", "CHEST", compression="rle"),
    SeriesSpec("PT", 120, "PET WB FDG", "WHOLEBODY"),
    SeriesSpec("PT", 40, "PET WB JPEG-LS", "WHOLEBODY", compression="jpegls"),
    SeriesSpec("MR", 50, "Cardiac LA 3D bSSFP", "HEART"),
    SeriesSpec("MR", 20, "MR J2K", "HEART", compression="j2k"),
    SeriesSpec("MR", 10, "MR deflated", "HEART", compression="deflate"),
    SeriesSpec("DX", 2, "Chest PA", "CHEST"),
)


def make_study(
    out_dir: str | Path,
    series: Sequence[SeriesSpec] = DEFAULT_STUDY,
    size: int = 64,
    seed: int = 0,
    study_uid: str | None = None,
) -> list[Path]:
    """Write one study with the given series; return the file paths in order."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    paths: list[Path] = []
    for number, spec in enumerate(series, start=1):
        series_uid = generate_uid()
        for index, ds in enumerate(_series(spec, study_uid, series_uid, number, size, rng)):
            path = out / f"{spec.modality}{number:02d}_{index + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _series(
    spec: SeriesSpec, study_uid: str, series_uid: str, number: int, size: int,
    rng: np.random.Generator,
) -> Iterator[Dataset]:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    for i in range(spec.count):
        z = i / max(spec.count - 1, 1) - 0.5
        phantom = np.exp(-((xx / 0.3) ** 2 + (yy / 0.25) ** 2 + (z / 0.6) ** 2))
        ds = _base(spec, study_uid, series_uid, number, i)
        if spec.modality == "DX":
            pixels = (phantom * 200 + rng.normal(0, 5, phantom.shape)).clip(0, 255)
            _set_pixels(ds, pixels.astype(np.uint8), bits=8, signed=False)
        else:
            pixels = phantom * 1000 + rng.normal(0, 20, phantom.shape)
            _set_pixels(ds, pixels.astype(np.int16), bits=16, signed=True)
            ds.ImagePositionPatient = [-size / 2, -size / 2, float(i)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 1.0
        ds.PixelSpacing = [1.0, 1.0]
        if spec.compression == "deflate":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif spec.compression:
            ds.compress(COMPRESSIONS[spec.compression])
        yield ds


def _base(spec: SeriesSpec, study_uid: str, series_uid: str, number: int, i: int) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASSES[spec.modality])
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds = Dataset()
    ds.file_meta = meta
    today = dt.date.today().strftime("%Y%m%d")
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = series_uid + ".1" if len(series_uid) < 62 else series_uid
    ds.PatientName = "QCD^DEMO"
    ds.PatientID = "QCD-DEMO-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "QCDDEMO1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.Modality = spec.modality
    ds.BodyPartExamined = spec.body_part
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = "Phantom"
    ds.StationName = "QCDSIM1"
    ds.DeviceSerialNumber = "SIM0001"
    ds.InstitutionName = "qcd demo site"
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = number
    ds.InstanceNumber = i + 1
    if spec.modality == "DX":
        ds.ViewPosition = "PA"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, bits: int, signed: bool) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()


PET_DOSE_BQ = 300e6
PET_HALF_LIFE_S = 6586.2  # 18F
PET_UPTAKE_S = 3600


def write_pet_series(
    volume_suv: np.ndarray,
    spacing: tuple[float, float, float],
    out_dir: str | Path,
    *,
    weight_kg: float = 70.0,
    description: str = "PET WB FDG",
    reconstruction: str = "OSEM3D 4i8s",
    kernel: str = "XYZ Gauss5.00",
    study_uid: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a (z, y, x) SUV volume as a PET Image Storage series in Bq/mL.

    The header carries what SUV needs (Units BQML, weight, dose, half-life, injection
    time one hour before the series, DecayCorrection START), so SUV read back equals
    ``volume_suv`` up to 16-bit quantisation. Files are named in shuffled order so
    readers must sort by position, as with real exports.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    decayed = PET_DOSE_BQ * np.exp(-np.log(2) * PET_UPTAKE_S / PET_HALF_LIFE_S)
    bqml = volume_suv.astype(np.float64) * decayed / (weight_kg * 1000.0)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    spec = SeriesSpec("PT", volume_suv.shape[0], description, "WHOLEBODY")
    names = rng.permutation(volume_suv.shape[0])
    paths = []
    for k in range(volume_suv.shape[0]):
        ds = _base(spec, study_uid, series_uid, 1, k)
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT"]
        ds.PatientWeight = weight_kg
        ds.PatientSize = 1.75
        ds.SeriesTime = ds.AcquisitionTime = "110000"
        ds.AcquisitionDate = ds.SeriesDate
        ds.ReconstructionMethod = reconstruction
        ds.ConvolutionKernel = kernel
        info = Dataset()
        info.Radiopharmaceutical = "Fluorodeoxyglucose"
        info.RadionuclideTotalDose = PET_DOSE_BQ
        info.RadionuclideHalfLife = PET_HALF_LIFE_S
        info.RadiopharmaceuticalStartTime = "100000"
        ds.RadiopharmaceuticalInformationSequence = [info]
        plane = bqml[k]
        top = max(float(plane.max()), 1.0)
        slope = top / 32767.0
        _set_pixels(ds, np.round(plane / slope).clip(-32768, 32767).astype(np.int16),
                    bits=16, signed=True)
        ds.RescaleSlope = f"{slope:.6g}"[:16]
        ds.RescaleIntercept = 0
        ds.RescaleType = "BQML"
        nz, ny, nx = volume_suv.shape
        # index 0 is the feet end: patient z (towards the head) grows with k
        ds.ImagePositionPatient = [-(nx - 1) * spacing[2] / 2, -(ny - 1) * spacing[1] / 2,
                                   k * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        path = out / f"PT_{int(names[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
