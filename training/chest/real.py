"""Readers for real chest X-ray label tables and image folders, so a site can retrain.

Three layouts, all giving :class:`Sample` rows with a 16-label target in
:data:`~qcd.analyzers.chest.labels.LABELS` order and a mask of the labels the source
actually states (NIH says nothing about COVID-19 or TB; CheXpert about half of ours):

* NIH ChestX-ray14 ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` joined
  by ``|`` or ``No Finding``, ``Patient ID``, ``View Position``, ...), images in a folder.
* CheXpert ``train.csv``/``valid.csv`` (``Path``, ``Frontal/Lateral``, ``AP/PA``, one
  column per finding with 1 / 0 / -1 uncertain / blank); lateral rows are dropped.
* A folder of DICOM or PNG files, with labels either from a CSV (``path,labels`` with
  ``|``-joined labels) or from sub-folder names (``root/Effusion/x.png``,
  ``root/No Finding/y.dcm``).

:func:`load_display` reads any of these images into display values the daemon's
preprocessing takes (DICOM through :func:`~qcd.analyzers.chest.preprocess.read_radiograph`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcd.analyzers.chest.labels import LABELS, canonical

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", "")
NO_FINDING = {"no finding", "normal", "no_finding"}
CHEXPERT_COLUMNS = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
                    "Consolidation": "Consolidation", "Edema": "Edema",
                    "Pleural Effusion": "Effusion", "Pneumonia": "Pneumonia",
                    "Pneumothorax": "Pneumothorax"}


@dataclass(frozen=True)
class Sample:
    """One real image and its labels."""

    path: Path
    target: tuple[float, ...]
    """1/0 per label in LABELS order (0 where unknown)."""
    known: tuple[bool, ...]
    """Which labels the source states; train with a masked loss on the others."""
    patient: str
    """Grouping key for patient-wise splits."""
    view: str = ""


class LabelTableError(ValueError):
    """A label table lacks a required column or names an unknown label."""


def _target(labels: list[str], known: set[str]) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    return (tuple(1.0 if label in labels else 0.0 for label in LABELS),
            tuple(label in known for label in LABELS))


def _require(fields: Sequence[str] | None, needed: tuple[str, ...], path: Path) -> None:
    missing = [c for c in needed if c not in (fields or [])]
    if missing:
        raise LabelTableError(f"{path.name}: missing column(s) {', '.join(missing)}; "
                              f"found {', '.join(fields or [])}")


def read_nih(csv_path: str | Path, images: str | Path, frontal_only: bool = True) -> list[Sample]:
    """Rows of NIH ChestX-ray14 ``Data_Entry_2017.csv`` whose image exists under ``images``.

    The 14 NIH findings are known for every row (absent = negative); COVID-19 and
    tuberculosis are unknown (masked).
    """
    csv_path, images = Path(csv_path), Path(images)
    known = {canonical(n) for n in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                    "Effusion", "Emphysema", "Fibrosis", "Hernia",
                                    "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
                                    "Pneumonia", "Pneumothorax")}
    out = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        _require(reader.fieldnames, ("Image Index", "Finding Labels", "Patient ID"), csv_path)
        for row in reader:
            view = (row.get("View Position") or "").strip().upper()
            if frontal_only and view not in ("PA", "AP", ""):
                continue
            path = images / row["Image Index"].strip()
            if not path.is_file():
                continue
            labels = []
            for name in row["Finding Labels"].split("|"):
                if name.strip().lower() in NO_FINDING or not name.strip():
                    continue
                label = canonical(name)
                if label is None:
                    raise LabelTableError(f"{csv_path.name}: unknown finding {name!r}")
                labels.append(label)
            target, mask = _target(labels, {k for k in known if k})
            out.append(Sample(path, target, mask, row["Patient ID"].strip(), view))
    return out


def read_chexpert(csv_path: str | Path, root: str | Path, uncertain: str = "ignore") -> list[
        Sample]:
    """Frontal rows of a CheXpert CSV; ``uncertain`` (-1) as ``ignore`` (masked), ``ones``
    or ``zeros`` (the U-Ignore / U-Ones / U-Zeros policies of the CheXpert paper)."""
    if uncertain not in ("ignore", "ones", "zeros"):
        raise ValueError(f"uncertain={uncertain!r}; valid: ignore, ones, zeros")
    csv_path, root = Path(csv_path), Path(root)
    out = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        _require(reader.fieldnames, ("Path",), csv_path)
        for row in reader:
            if (row.get("Frontal/Lateral") or "Frontal").strip() != "Frontal":
                continue
            rel = row["Path"].strip()
            path = root / rel
            if not path.is_file():  # CSV paths usually start with the dataset folder name
                path = root / Path(*Path(rel).parts[1:])
            if not path.is_file():
                continue
            labels, known = [], set()
            for column, label in CHEXPERT_COLUMNS.items():
                value = (row.get(column) or "").strip()
                if value == "":
                    continue  # not mentioned: unknown
                v = float(value)
                if v < 0 and uncertain == "ignore":
                    continue
                known.add(label)
                if v > 0 or (v < 0 and uncertain == "ones"):
                    labels.append(label)
            parts = Path(rel).parts
            patient = next((p for p in parts if p.startswith("patient")), rel)
            target, mask = _target(labels, known)
            out.append(Sample(path, target, mask, patient, (row.get("AP/PA") or "").strip()))
    return out


def read_folder(root: str | Path, labels_csv: str | Path | None = None) -> list[Sample]:
    """A folder of DICOM/PNG images labelled by a CSV (``path,labels``; labels joined by
    ``|``, empty or ``No Finding`` for none) or, without one, by sub-folder name.

    All 16 labels count as known: a site that labels its own images states every label.
    """
    root = Path(root)
    every = set(LABELS)
    out = []
    if labels_csv is not None:
        table = Path(labels_csv)
        with table.open(newline="") as fh:
            reader = csv.DictReader(fh)
            _require(reader.fieldnames, ("path", "labels"), table)
            for row in reader:
                path = root / row["path"].strip()
                if not path.is_file():
                    raise LabelTableError(f"{table.name}: {row['path']} does not exist")
                names = [n for n in row["labels"].split("|")
                         if n.strip() and n.strip().lower() not in NO_FINDING]
                labels = [c for n in names if (c := canonical(n)) is not None]
                if len(labels) != len(names):
                    raise LabelTableError(f"{table.name}: unknown label in {row['labels']!r}; "
                                          f"valid: {', '.join(LABELS)}")
                target, mask = _target(labels, every)
                out.append(Sample(path, target, mask, (row.get("patient") or path.stem)))
        return out
    for path in sorted(p for p in root.rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES):
        folder = path.parent.name
        found: list[str] = []
        if folder.lower() not in NO_FINDING:
            label = canonical(folder)
            if label is None:
                raise LabelTableError(f"folder {folder!r} is not a label; valid: "
                                      f"{', '.join(LABELS)} or 'No Finding'")
            found = [label]
        target, mask = _target(found, every)
        out.append(Sample(path, target, mask, path.stem))
    return out


def load_display(path: str | Path) -> np.ndarray:
    """Display values in [0, 1] (bright = attenuating) of a DICOM or PNG/JPEG radiograph."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("I") if im.mode in ("I;16", "I") else im.convert("L"),
                             dtype=np.float32)
        top = 65535.0 if arr.max() > 255 else 255.0
        return (arr / top).astype(np.float32)
    from qcd.analyzers.chest.preprocess import read_radiograph

    return read_radiograph(path).display
