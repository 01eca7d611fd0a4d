"""Write a simulated 168-slice Scanco-like HR-pQCT stack as DICOM (demo, tests, latency bench).

    python -m training.motion.demo OUT_DIR [--motion-um 450] [--seed 7]

The stack is one XtremeCT II-like stack: 168 axial slices of 384 x 384 at 60.7 um
(a 23.3 mm field around a distal-radius-like phantom), CT Image Storage, Manufacturer
"SCANCO Medical", model "XtremeCT II", values in mg HA/cm3 (int16, slope 1). The
patient is fictitious.

To stay fast on a CPU, only ``ANCHORS`` slices are projected and reconstructed (with
one motion path, as one stack is one rotation); the other slices are linear blends of
their two neighbouring anchors. Projection and FBP are linear, so a blend of
reconstructions *is* the reconstruction of the blended object: the motion artefacts are
exact, the trabecular pattern varies smoothly along z, and the anchors sit exactly on
the slices the analyzer picks (:func:`qcd.analyzers.motion.preprocess.pick_slices`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path

import numpy as np
import torch

from qcd.analyzers.motion.preprocess import N_SLICES, pick_slices
from training.motion.simulate import FULL, MU_SOFT, Geometry, add_noise, fbp, motion_path, \
    phantom, project

STACK_SLICES = 168
MU_BONE_REF = 1.28
"""Attenuation (1/cm) that maps to 1200 mg HA/cm3; soft tissue maps to 0."""
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def to_density(mu: np.ndarray) -> np.ndarray:
    """Attenuation (1/cm) -> mg HA/cm3 (linear: soft tissue 0, bone tissue ~1200)."""
    return (mu - MU_SOFT) / (MU_BONE_REF - MU_SOFT) * 1200.0


def simulate_stack(motion_um: float, seed: int, g: Geometry = FULL,
                   n_slices: int = STACK_SLICES, kind: str | None = None
                   ) -> tuple[np.ndarray, float]:
    """(n_slices, N, N) reconstruction in 1/cm and the motion magnitude (um) it carries."""
    anchors = np.unique(np.concatenate([[0], pick_slices(n_slices, N_SLICES), [n_slices - 1]]))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    obj = phantom(len(anchors), g, gen)
    path = motion_path(rng, g.views, motion_um, kind)
    sino = project(obj, g, torch.from_numpy(path.shift_mm), torch.from_numpy(path.rot_rad))
    i0 = float(math.exp(rng.uniform(math.log(1e4), math.log(1e5))))
    recon = fbp(add_noise(sino, i0, gen), g).numpy()
    out = np.empty((n_slices, g.size, g.size), dtype=np.float32)
    for z in range(n_slices):
        k = int(np.searchsorted(anchors, z, side="right")) - 1
        k = min(k, len(anchors) - 2)
        w = (z - anchors[k]) / (anchors[k + 1] - anchors[k])
        out[z] = (1 - w) * recon[k] + w * recon[k + 1]
    return out, path.magnitude_um


def write_stack(volume_mu: np.ndarray, pixel_mm: float, out: Path, description: str,
                seed: int = 0) -> list[Path]:
    """Write a (z, y, x) attenuation stack as a Scanco-like CT series; files named shuffled."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    from qcd.ingest.filemeta import IMPLEMENTATION_CLASS_UID

    out.mkdir(parents=True, exist_ok=True)
    density = np.round(to_density(volume_mu)).clip(-32768, 32767).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    today = dt.date.today().strftime("%Y%m%d")
    names = np.random.default_rng(seed).permutation(len(density))
    paths = []
    for k, plane in enumerate(density):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, \
            meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.PatientName, ds.PatientID = "QCD^DEMO", "QCD-DEMO-0002"
        ds.PatientBirthDate, ds.PatientSex = "19500101", "O"
        ds.AccessionNumber = "QCDHRPQCT1"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.Modality = "CT"
        ds.Manufacturer = "SCANCO Medical"
        ds.ManufacturerModelName = "XtremeCT II"
        ds.StationName, ds.DeviceSerialNumber = "QCDSIMXCT2", "SIM0002"
        ds.InstitutionName = "qcd demo site"
        ds.BodyPartExamined = "RADIUS"
        ds.SeriesDescription = description
        ds.KVP = 68
        ds.XRayTubeCurrent = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "MGHA"
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = pixel_mm
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, round(k * pixel_mm, 4)]
        ds.PixelData = plane.tobytes()
        path = out / f"XCT{int(names[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_demo_series(out: Path, motion_um: float = 450.0, seed: int = 7,
                      n_slices: int = STACK_SLICES) -> tuple[list[Path], str]:
    """Simulate and write one 168-slice XtremeCT II-like stack; returns (files, description).

    This is the hook ``tests/bench/bench_latency.py`` calls (``--analyzer motion``): the
    default 450 um step/drift motion is grade 4, so the rescan path (finding, alert) runs.
    About 10 s on one CPU core.
    """
    from training.motion.simulate import grade_from_motion

    volume, magnitude = simulate_stack(motion_um, seed, n_slices=n_slices)
    grade = int(grade_from_motion(magnitude))
    what = (f"{n_slices} slices of {volume.shape[1]}x{volume.shape[2]} at "
            f"{FULL.pixel_mm * 1000:.0f} um, simulated HR-pQCT, motion {magnitude:.0f} um "
            f"(grade {grade})")
    files = write_stack(volume, FULL.pixel_mm, Path(out),
                        f"HR-pQCT radius sim motion {magnitude:.0f}um grade {grade}", seed)
    return files, what


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--motion-um", type=float, default=450.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    files, what = write_demo_series(args.out, args.motion_um, args.seed)
    print(f"wrote {len(files)} files to {args.out}: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
