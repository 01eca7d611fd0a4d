"""Write simulated chest radiographs as DICOM (for the demo and end-to-end tests).

    python -m training.chest.demo OUT_DIR [--labels Pneumothorax,Effusion] [--seed 7]

Writes one study with four single-image series: a PA view as DX for presentation
(MONOCHROME2, window centre/width), the same image as MONOCHROME1 (inverted stored
values, as many CR readers send), a CR PA view with a VOI LUT Sequence instead of a
window, and a lateral view (ViewPosition LL: the analyzer answers ``not_applicable``).
The "lateral" is the frontal simulation re-labelled: only its header matters here.
The patient is fictitious (``QCD^DEMO``); the series description names the truth.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from qcd.analyzers.chest.analyzer import CR_STORAGE, DX_PRESENTATION
from qcd.analyzers.chest.labels import LABELS
from qcd.ingest.filemeta import IMPLEMENTATION_CLASS_UID
from training.chest.simulate import simulate

BITS = 12


def render(labels: list[str], seed: int, shape: tuple[int, int] = (320, 320)) -> tuple[
        np.ndarray, float]:
    """One simulated radiograph (display values in [0, 1]) with the given findings."""
    unknown = [label for label in labels if label not in LABELS]
    if unknown:
        raise ValueError(f"unknown labels {unknown}; valid: {', '.join(LABELS)}")
    y = torch.zeros(1, len(LABELS))
    for label in labels:
        y[0, LABELS.index(label)] = 1
    batch = simulate(y, torch.Generator().manual_seed(seed), shape)
    return batch.display[0].numpy(), batch.pixel_mm


def _dataset(sop_class: str, modality: str, study_uid: str, number: int, view: str,
             description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds = Dataset()
    ds.file_meta = meta
    today = dt.date.today().strftime("%Y%m%d")
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "QCD^DEMO", "QCD-DEMO-0001", "19700101", "O")
    ds.AccessionNumber, ds.StudyID = "QCDDEMO1", "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", view
    ds.Manufacturer, ds.ManufacturerModelName = "QCD Synthetic", "Chest phantom"
    ds.StationName, ds.InstitutionName = "QCDSIM1", "qcd demo site"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description[:64], number, 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, photometric: str, spacing: float) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.ImagerPixelSpacing = [round(spacing, 4), round(spacing, 4)]
    ds.PixelSpacing = [round(spacing, 4), round(spacing, 4)]


def write_study(out: Path, labels: list[str], seed: int,
                shape: tuple[int, int] = (320, 264)) -> dict[str, Path]:
    """Write the four demo series; return their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    display, spacing = render(labels, seed, shape)
    top = 2 ** BITS - 1
    stored = np.round(display * top).astype(np.uint16)
    truth = ", ".join(labels) or "no finding"
    study = generate_uid()
    paths: dict[str, Path] = {}
    for number, (kind, sop, modality, view, photometric) in enumerate((
            ("pa", DX_PRESENTATION, "DX", "PA", "MONOCHROME2"),
            ("pa_monochrome1", DX_PRESENTATION, "DX", "PA", "MONOCHROME1"),
            ("cr_voi_lut", CR_STORAGE, "CR", "PA", "MONOCHROME2"),
            ("lateral", DX_PRESENTATION, "DX", "LL", "MONOCHROME2")), start=1):
        ds = _dataset(sop, modality, study, number, view, f"chest sim {kind}: {truth}")
        pixels = top - stored if photometric == "MONOCHROME1" else stored
        _pixels(ds, pixels, photometric, spacing)
        if kind == "cr_voi_lut":
            lut = Dataset()
            lut.add_new("LUTDescriptor", "US", [top + 1, 0, 16])
            lut.add_new("LUTData", "US", np.linspace(0, 65535, top + 1).astype(int).tolist())
            lut.LUTExplanation = "linear"
            ds.VOILUTSequence = [lut]
        else:
            ds.WindowCenter, ds.WindowWidth = (top + 1) / 2, top + 1
        path = out / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[kind] = path
    return paths


def write_demo_series(out: Path, seed: int = 7) -> tuple[list[Path], str]:
    """One PA radiograph with a pneumothorax, for ``bench_latency.py --analyzer chest``."""
    paths = write_study(out, ["Pneumothorax"], seed)
    return [paths["pa"]], "one simulated PA chest radiograph (pneumothorax), 320x264"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--labels", default="Pneumothorax",
                   help=f"comma-separated findings (valid: {', '.join(LABELS)}); '' for none")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    paths = write_study(args.out, labels, args.seed)
    print(f"wrote {len(paths)} chest radiographs ({', '.join(labels) or 'no finding'}, "
          f"seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
