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
preprocessing takes (DICOM through :func:`~qcd.analyzers.chest.preprocess.read_radiograph`);
:func:`prepare_inputs` turns them into model inputs with the daemon's ``prepare_batch``,
:func:`split_by_patient` splits them for ``python -m training.chest.train --real-format``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qcd.analyzers.chest.labels import LABELS, canonical
from qcd.analyzers.chest.preprocess import prepare_batch, read_radiograph
from qcd.errors import InferenceError

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


def read_nih(csv_path: str | Path, images: str | Path | Sequence[str | Path],
             frontal_only: bool = True) -> list[Sample]:
    """Rows of NIH ChestX-ray14 ``Data_Entry_2017.csv`` whose image exists under ``images``
    (a folder, or several: the Kaggle copy has ``images_001/images`` ... ``images_012/images``).

    The 14 NIH findings are known for every row (absent = negative); COVID-19 and
    tuberculosis are unknown (masked).
    """
    csv_path = Path(csv_path)
    folders = [Path(images)] if isinstance(images, str | Path) else [Path(f) for f in images]
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
            name = row["Image Index"].strip()
            path = next((f / name for f in folders if (f / name).is_file()), None)
            if path is None:
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


def read_chexpert(csv_path: str | Path, root: str | Path, uncertain: str = "ignore",
                  blank: str = "unknown") -> list[Sample]:
    """Frontal rows of a CheXpert CSV; ``uncertain`` (-1) as ``ignore`` (masked), ``ones``
    or ``zeros`` (the U-Ignore / U-Ones / U-Zeros policies of the CheXpert paper); a blank
    (finding not mentioned in the report) as ``unknown`` (masked) or ``negative``."""
    if uncertain not in ("ignore", "ones", "zeros"):
        raise ValueError(f"uncertain={uncertain!r}; valid: ignore, ones, zeros")
    if blank not in ("unknown", "negative"):
        raise ValueError(f"blank={blank!r}; valid: unknown, negative")
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
                    if blank == "negative":
                        known.add(label)
                    continue  # not mentioned
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
    return read_radiograph(path).display


FORMATS = ("nih", "chexpert", "folder")


def read_samples(fmt: str, root: str | Path, csv_path: str | Path | None = None,
                 images: str | Path | None = None, uncertain: str = "ignore",
                 blank: str = "unknown") -> list[Sample]:
    """The samples of one layout, with the usual file names as defaults.

    ``nih``: ``root/Data_Entry_2017.csv``, images in ``root/images``, else in
    ``root/images_*/images`` (the Kaggle copy), else in ``root``;
    ``chexpert``: ``root/train.csv``; ``folder``: a ``path,labels[,patient]`` CSV when
    given, else sub-folder names (then every file is its own patient: give a CSV with a
    ``patient`` column so that one patient's images stay on one side of the split).

    Raises
    ------
    ValueError
        An unknown format, or no readable image rows (the message names what was read).
    """
    root = Path(root)
    if fmt == "nih":
        table = Path(csv_path) if csv_path else root / "Data_Entry_2017.csv"
        folders = ([Path(images)] if images else [root / "images"] if (
            root / "images").is_dir() else sorted(root.glob("images_*/images")) or [root])
        samples = read_nih(table, folders)
        where = f"{table} with images in {', '.join(map(str, folders))}"
    elif fmt == "chexpert":
        table = Path(csv_path) if csv_path else root / "train.csv"
        samples = read_chexpert(table, root, uncertain, blank)
        where = f"{table} under {root}"
    elif fmt == "folder":
        samples = read_folder(root, csv_path)
        where = f"{root}" + (f" labelled by {csv_path}" if csv_path else "")
    else:
        raise ValueError(f"real data format {fmt!r} is unknown; valid: {', '.join(FORMATS)}")
    if not samples:
        raise ValueError(f"no frontal images with labels found in {where}")
    return samples


def split_by_patient(patients: Sequence[str], val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, held-out) indices; all images of a patient go to one set.

    Patients are shuffled with ``seed`` and the first ``test_fraction`` of them (at least
    one) are held out, the next ``val_fraction`` (at least one) validate.

    Raises
    ------
    ValueError
        Fractions outside (0, 1) or summing to >= 1, or fewer than 3 patients.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must "
                         "be in (0, 1) and sum to less than 1")
    names = sorted(set(patients))
    if len(names) < 3:
        raise ValueError(f"a patient-wise split needs at least 3 patients; the data has "
                         f"{len(names)}")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_test = max(1, int(round(test_fraction * len(names))))
    n_val = max(1, min(int(round(val_fraction * len(names))), len(names) - n_test - 1))
    side = {p: 2 for p in order[:n_test]} | {p: 1 for p in order[n_test:n_test + n_val]}
    sets: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, p in enumerate(patients):
        sets[side.get(p, 0)].append(i)
    return sets


def label_counts(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """Per label: images that state it (``known``) and of those, ``positives``."""
    known = np.array([s.known for s in samples], dtype=bool).reshape(-1, len(LABELS))
    target = np.array([s.target for s in samples], dtype=float).reshape(-1, len(LABELS))
    return {label: {"known": int(known[:, i].sum()),
                    "positives": int((target[:, i] * known[:, i]).sum())}
            for i, label in enumerate(LABELS)}


class _Prepared(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Sample ``i`` -> (i, model input (1, S, S) float16 or None, why not)."""

    def __init__(self, samples: Sequence[Sample], size: int) -> None:
        self.paths = [s.path for s in samples]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            display = torch.from_numpy(load_display(self.paths[i]))[None]
            return i, prepare_batch(display, self.size)[0].half(), ""
        except (InferenceError, OSError, ValueError) as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def prepare_inputs(samples: Sequence[Sample], size: int, workers: int = 0
                   ) -> tuple[torch.Tensor, list[int], list[str]]:
    """Model inputs of ``samples`` through the daemon's preprocessing, one image at a time.

    Each image is read by :func:`load_display` and prepared alone by
    :func:`~qcd.analyzers.chest.preprocess.prepare_batch`, as the analyzer does.
    Returns (inputs (n_ok, 1, S, S) float16 on the CPU, indices of the readable samples,
    one message per unreadable one). All are kept in memory: the 112,120 NIH images at
    256 px take about 15 GB.
    """
    out = torch.empty((len(samples), 1, size, size), dtype=torch.float16)
    ok: list[int] = []
    errors: list[str] = []
    loader: DataLoader[tuple[int, torch.Tensor | None, str]] = DataLoader(
        _Prepared(samples, size), batch_size=None, num_workers=workers)
    for i, x, err in loader:
        if x is None:
            errors.append(f"{samples[i].path.name}: {err}")
        else:
            out[len(ok)] = x
            ok.append(int(i))
    return out[:len(ok)], ok, errors
