"""Real site data for the EARL CNNs: a label table, case loading and grouped cross-validation.

The label table is a CSV with one row per reconstruction::

    path,label,group,voxel_mm,units
    site1/pat001_osem,EARL1,pat001,,
    site1/pat001_psf,clinical,pat001,,
    site2/pat017.nii.gz,EARL2,scannerB,"3,4,4",suv

``path`` is a DICOM series folder or a NIfTI file (relative to the CSV's folder or
absolute); ``label`` is clinical, EARL1 or EARL2; ``group`` is the patient (or scanner)
id: all reconstructions of one group land in the same fold, as in Pfaehler et al. 2022,
so that a fold never tests on a patient it trained on. ``voxel_mm`` ("z,y,x") and
``units`` ("suv" or "bqml") are optional and apply to NIfTI only. DICOM is read and
converted to SUV by the daemon's own functions, so training sees what the analyzer sees.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing as mp
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.errors import InvalidDicomError

from qcd.analyzers.earl.analyzer import MIN_SLICES
from qcd.analyzers.earl.decision import Thresholds
from qcd.analyzers.earl.preprocess import prepare
from qcd.analyzers.earl.suv import SuvUnavailable, suv_factor
from qcd.analyzers.volume import load_volume
from qcd.errors import InferenceError
from training.earl.cases import LABELS, Case
from training.earl.train import evaluate, fit

LOGGER = logging.getLogger("training.earl.real")
REQUIRED_COLUMNS = ("path", "label", "group")
OPTIONAL_COLUMNS = ("voxel_mm", "units")
UNITS = ("suv", "bqml")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SPACING_TOL = 0.01
"""Relative difference tolerated between the CSV's voxel_mm and the NIfTI header."""
_MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
_BQML_NIFTI = ("NIfTI in Bq/mL cannot be converted to SUV: the weight, dose and times are "
               "in the DICOM header only; export the NIfTI in SUV or list the DICOM series")


@dataclass(frozen=True)
class LabelRow:
    """One validated row of the label table."""

    path: Path
    """Absolute path of the DICOM series folder or NIfTI file."""
    label: str
    group: str
    voxel_mm: tuple[float, float, float] | None = None
    units: str = "suv"
    line: int = 0
    """Line in the CSV (header = 1), for error messages."""

    @property
    def is_nifti(self) -> bool:
        return self.path.name.lower().endswith(NIFTI_SUFFIXES)

    @property
    def where(self) -> str:
        return f"{self.path} (label table line {self.line})" if self.line else str(self.path)


def _bad(csv_path: Path, line: int, column: str, message: str) -> ValueError:
    return ValueError(f"{csv_path}, line {line}, column '{column}': {message}")


def _parse_voxel(text: str) -> tuple[float, float, float]:
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    values = [float(p) for p in parts]  # ValueError on non-numbers, caught by the caller
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(text)
    return values[0], values[1], values[2]


def _row(csv_path: Path, line: int, raw: dict[str, str]) -> LabelRow:
    """Validate one CSV row; every error names the line, the column and what is allowed."""
    cell = {k: (raw.get(k) or "").strip() for k in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
    label = {t.lower(): t for t in LABELS}.get(cell["label"].lower())
    if label is None:
        raise _bad(csv_path, line, "label",
                   f"{cell['label']!r} is not one of {', '.join(LABELS)}")
    if not cell["group"]:
        raise _bad(csv_path, line, "group", "empty; expected a patient or scanner id")
    if not cell["path"]:
        raise _bad(csv_path, line, "path",
                   "empty; expected a DICOM series folder or a .nii/.nii.gz file")
    path = Path(cell["path"]).expanduser()
    path = (path if path.is_absolute() else csv_path.parent / path).resolve()
    nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
    if not (path.is_file() if nifti else path.is_dir()):
        state = "is not a folder or NIfTI file" if path.exists() else "does not exist"
        raise _bad(csv_path, line, "path", f"{path} {state}; expected a DICOM series folder "
                   "or a .nii/.nii.gz file")
    voxel = None
    if cell["voxel_mm"]:
        if not nifti:
            raise _bad(csv_path, line, "voxel_mm", "applies to NIfTI only; a DICOM series' "
                       "spacing comes from its headers (leave the cell empty)")
        try:
            voxel = _parse_voxel(cell["voxel_mm"])
        except ValueError:
            raise _bad(csv_path, line, "voxel_mm", f"{cell['voxel_mm']!r} is not three "
                       "positive sizes in mm, 'z,y,x'") from None
    units = cell["units"].lower() or "suv"
    if cell["units"] and not nifti:
        raise _bad(csv_path, line, "units", "applies to NIfTI only; a DICOM series is "
                   "converted to SUV from its headers (leave the cell empty)")
    if units not in UNITS:
        raise _bad(csv_path, line, "units", f"{cell['units']!r} is not one of {', '.join(UNITS)}")
    if units == "bqml":
        raise _bad(csv_path, line, "units", _BQML_NIFTI)
    return LabelRow(path, label, cell["group"], voxel, units, line)


def read_label_table(csv_path: str | Path) -> list[LabelRow]:
    """Read and validate the whole label table before any image is loaded (fail fast).

    Raises
    ------
    ValueError
        A required column is missing, or a row has a bad value: the message names the
        line, the column and what is allowed. Also when the table has no rows or lists
        one image twice (it would leak between folds).
    """
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(repr(c) for c in missing)}; expected a "
                f"header with {', '.join(REQUIRED_COLUMNS)} (optional: "
                f"{', '.join(OPTIONAL_COLUMNS)}), got {header}")
        reader.fieldnames = header
        rows = [_row(csv_path, reader.line_num, raw) for raw in reader]
    if not rows:
        raise ValueError(f"{csv_path}: no rows below the header; expected one row per case")
    seen: dict[Path, int] = {}
    for r in rows:
        if r.path in seen:
            raise _bad(csv_path, r.line, "path",
                       f"{r.path} is already listed on line {seen[r.path]}")
        seen[r.path] = r.line
    return rows


def _dicom_suv(row: LabelRow) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Every file in the folder but hidden ones is a slice of one series, as the daemon sees it."""
    files = sorted(p for p in row.path.iterdir() if p.is_file() and not p.name.startswith("."))
    try:
        volume = load_volume(files, MIN_SLICES)
    except (InferenceError, InvalidDicomError) as exc:
        raise InferenceError(f"{row.where}: not one readable PET series: {exc}") from exc
    try:
        factor = suv_factor(volume.first)
    except SuvUnavailable as exc:
        raise SuvUnavailable(f"{row.where}: no SUV: {exc}") from exc
    return volume.array * np.float32(factor), volume.spacing


def _nifti_suv(row: LabelRow) -> tuple[np.ndarray, tuple[float, float, float]]:
    """NIfTI reoriented to the DICOM convention of ``load_volume``: (z, y, x) = (S, P, L)."""
    if row.units == "bqml":
        raise ValueError(f"{row.where}: {_BQML_NIFTI}")
    try:
        import nibabel
    except ImportError:
        raise ImportError(f"{row.where}: reading NIfTI needs nibabel: pip install nibabel"
                          ) from None
    image = nibabel.as_closest_canonical(nibabel.load(row.path))  # axes R, A, S
    data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{row.where}: expected a 3-D volume, got shape {data.shape}")
    array = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))
    unit = _MM_PER_UNIT.get(str(image.header.get_xyzt_units()[0]), 1.0)
    zooms = [float(z) * unit for z in image.header.get_zooms()[:3]]
    header = (zooms[2], zooms[1], zooms[0])
    usable = all(math.isfinite(z) and z > 0 for z in header)
    if row.voxel_mm is None and not usable:
        raise ValueError(f"{row.where}: the NIfTI header has no usable voxel size "
                         f"({header}); give voxel_mm 'z,y,x' in the label table")
    if row.voxel_mm is not None and usable and not np.allclose(
            row.voxel_mm, header, rtol=_SPACING_TOL):
        raise ValueError(f"{row.where}: voxel_mm {row.voxel_mm} in the label table "
                         f"disagrees with the NIfTI header {header} (z, y, x)")
    return array, (row.voxel_mm or header)


def load_case(row: LabelRow) -> Case:
    """Read one labelled reconstruction and preprocess it exactly as the analyzer does.

    Raises
    ------
    InferenceError
        The DICOM series cannot be read as one volume, or has no SUV
        (:class:`~qcd.analyzers.earl.suv.SuvUnavailable`); the message names the path.
    ImportError
        A NIfTI file and no nibabel.
    ValueError
        A NIfTI in Bq/mL, not 3-D, or without a usable voxel size.
    """
    suv, spacing = (_nifti_suv if row.is_nifti else _dicom_suv)(row)
    s1, _, s2, _ = prepare(suv, spacing)
    return Case(s1.astype(np.float16), s2.astype(np.float16), row.label,
                {"source": str(row.path), "group": row.group,
                 "spacing": [round(float(s), 4) for s in spacing]})


def load_cases(rows: Sequence[LabelRow], workers: int = 1) -> list[Case]:
    """:func:`load_case` for every row, in row order, in ``workers`` processes."""
    if workers <= 1 or len(rows) < 2:
        return [load_case(r) for r in rows]
    with mp.get_context("spawn").Pool(min(workers, len(rows))) as pool:
        return pool.map(load_case, rows, chunksize=1)


def grouped_folds(groups: Sequence[str], k: int = 5, seed: int = 0
                  ) -> list[tuple[list[int], list[int]]]:
    """(train, test) indices of ``k`` folds that never split a group (GroupKFold-like).

    Groups are assigned largest first to the fold with the fewest cases so far (ties:
    the lower fold); ``seed`` only orders groups of equal size, so the split is
    deterministic for a given table and seed.

    Raises
    ------
    ValueError
        ``k`` < 2 or fewer distinct groups than ``k``.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 folds, got {k}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    if len(members) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} groups "
                         f"(patients or scanners); the table has {len(members)}")
    names = list(members)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    ordered = sorted(shuffled, key=lambda g: -len(members[g]))  # stable: ties keep the shuffle
    tests: list[list[int]] = [[] for _ in range(k)]
    for g in ordered:
        fold = min(range(k), key=lambda f: len(tests[f]))
        tests[fold] += members[g]
    folds = []
    for t in tests:
        held_out = set(t)
        folds.append(([i for i in range(len(groups)) if i not in held_out], sorted(t)))
    return folds


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _pooled(confusion: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Case-level metrics of the summed confusion (stage 1 follows from the verdicts)."""
    total = {t: sum(confusion[t].values()) for t in LABELS}
    n = sum(total.values())
    # a verdict is "clinical" exactly when P(EARL) is below the stage-1 threshold
    stage1_ok = confusion["clinical"]["clinical"] + sum(
        total[t] - confusion[t]["clinical"] for t in ("EARL1", "EARL2"))
    return {
        "n_cases": n,
        "stage1_accuracy": stage1_ok / max(n, 1),
        "accuracy_per_class": {t: confusion[t][t] / total[t] if total[t] else None
                               for t in LABELS},
        "indeterminate_rate": sum(row["indeterminate"] for row in confusion.values()) / max(n, 1),
        "confusion": confusion,
    }


def cross_validate(cases: Sequence[Case], groups: Sequence[str], k: int, epochs: int,
                   device: torch.device, seed: int, architecture: str = "edgenet"
                   ) -> dict[str, Any]:
    """Grouped k-fold: train on k-1 folds, evaluate the held-out fold with the daemon's rule.

    Means skip folds where a quantity is undefined (no test case of that class, or no
    EARL case for stage 2) instead of counting them as 0. ``pooled`` sums the folds'
    confusion matrices. Group ids are not returned: they may be patient ids.

    Raises
    ------
    ValueError
        ``groups`` and ``cases`` differ in length, too few groups, or a training fold
        without any EARL case (stage 2 would have nothing to learn).
    """
    if len(cases) != len(groups):
        raise ValueError(f"{len(cases)} cases but {len(groups)} groups")
    folds = []
    for fold, (train_idx, test_idx) in enumerate(grouped_folds(groups, k, seed)):
        train = [cases[i] for i in train_idx]
        test = [cases[i] for i in test_idx]
        counts = Counter(c.label for c in train)
        if counts["EARL1"] + counts["EARL2"] == 0:
            raise ValueError(f"fold {fold + 1} of {k}: its training cases have no EARL1 or "
                             "EARL2 reconstruction; add EARL cases or use fewer folds")
        absent = [t for t in LABELS if not counts[t]]
        if absent:
            LOGGER.warning("fold %d of %d: no %s case to train on", fold + 1, k,
                           ", ".join(absent))
        LOGGER.info("fold %d/%d: %d training, %d test cases", fold + 1, k, len(train), len(test))
        model = fit(train, architecture, epochs, device, seed)
        metrics = evaluate(model, test, torch.device("cpu"), Thresholds())
        folds.append({"fold": fold + 1, "n_train": len(train),
                      "n_test_groups": len({groups[i] for i in test_idx}), **metrics})
    verdicts = (*LABELS, "indeterminate")
    confusion = {t: {p: sum(f["confusion"][t][p] for f in folds) for p in verdicts}
                 for t in LABELS}
    has = {t: [f for f in folds if sum(f["confusion"][t].values())] for t in LABELS}
    earl = [f for f in folds
            if sum(f["confusion"]["EARL1"].values()) + sum(f["confusion"]["EARL2"].values())]
    return {
        "architecture": architecture, "k": k, "seed": seed, "epochs": epochs,
        "n_cases": len(cases), "n_groups": len(set(groups)),
        "mean": {
            "stage1_accuracy": _mean([f["stage1_accuracy"] for f in folds]),
            "stage2_accuracy": _mean([f["stage2_accuracy"] for f in earl]),
            "accuracy_per_class": {t: _mean([f["accuracy_per_class"][t] for f in has[t]])
                                   for t in LABELS},
            "indeterminate_rate": _mean([f["indeterminate_rate"] for f in folds]),
        },
        "pooled": _pooled(confusion),
        "folds": folds,
    }


def cv_score(result: dict[str, Any]) -> float:
    """The worst class's mean accuracy: how architectures are compared on real data."""
    values = [v for v in result["mean"]["accuracy_per_class"].values() if v is not None]
    return min(values) if values else 0.0


def describe(rows: Sequence[LabelRow], csv_path: Path) -> dict[str, Any]:
    """What the bundle records about the real data: counts only, never group ids."""
    return {
        "kind": "real PET", "label_table": csv_path.name, "n_cases": len(rows),
        "n_groups": len({r.group for r in rows}),
        "label_counts": {t: sum(r.label == t for r in rows) for t in LABELS},
        "formats": {"dicom": sum(not r.is_nifti for r in rows),
                    "nifti": sum(r.is_nifti for r in rows)},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def model_card(spec: dict[str, Any]) -> str:
    """MODEL_CARD.md for a bundle trained on real data, from its model.json."""
    t, data = spec["training"], spec["training"]["data"]
    cv = spec["metrics"]["cross_validated_real"]
    mean, pooled = cv["mean"], cv["pooled"]
    rows = "\n".join(
        f"| {label} | {sum(pooled['confusion'][label].values())} | "
        f"{_pct(mean['accuracy_per_class'][label])} | "
        + " / ".join(f"{p} {v}" for p, v in pooled["confusion"][label].items()) + " |"
        for label in LABELS)
    th = spec["thresholds"]
    return f"""# Model card: earl {spec['version']} (PET EARL compliance, real data)

**Trained on the site's own labelled PET** ({data['n_cases']} reconstructions, {data['n_groups']}
patients/scanners; {', '.join(f'{k} {v}' for k, v in data['label_counts'].items())}).
Metrics are from {cv['k']}-fold cross-validation grouped by patient/scanner (no fold tests
on a group it trained on); the bundle's model is then trained on all cases.

## Intended use
Quality control of FDG PET reconstructions beside a PACS: flag whether a reconstruction
looks clinical, EARL1- or EARL2-compliant. Not for diagnosis; not a substitute for the
EARL phantom accreditation (`qcd earl-phantom` measures the phantom).

## Model
Two 2D CNNs ({spec['architecture']}) on sagittal edge images (SUV minus its
{spec['input']['edge_fwhm_mm']} mm FWHM blur on a {spec['input']['grid_mm']} mm grid), after
Pfaehler et al., EJNMMI Phys 2022;9:53. Stage 1 calls EARL at mean P(EARL) >= {th['stage1']};
stage 2 calls EARL2 at P(EARL2) >= {th['earl2']}, EARL1 at P(EARL1) >= {th['earl1']},
otherwise `indeterminate`. Preprocessing `{spec['preprocessing']}`; weights sha256
`{spec['sha256']}`.

## Training
Label table `{data['label_table']}` ({data['formats']['dicom']} DICOM series,
{data['formats']['nifti']} NIfTI); seed {t['seed']}, {t['epochs']} epochs, trained on
{t['trained_on']} in {t['seconds']} s. Reproduce: `{t['command']}`.

## Cross-validated metrics ({cv['k']} folds, grouped)
Stage 1 accuracy (mean over folds): **{_pct(mean['stage1_accuracy'])}**; stage 2 (EARL1 vs
EARL2): **{_pct(mean['stage2_accuracy'])}**; indeterminate: {_pct(mean['indeterminate_rate'])}.
Pooled over folds: stage 1 {_pct(pooled['stage1_accuracy'])}.

| true class | cases | correct (mean over folds) | predicted (clinical / EARL1 / EARL2 / indeterminate), pooled |
|---|---|---|---|
{rows}

## Limits
- Labels come from the site's table; their quality bounds the model's.
- Cross-validation estimates the accuracy of this recipe on these scanners; other
  scanners and protocols need their own validation.
- FDG whole-body only. Needs SUV (Units BQML, weight, dose, half-life, decay correction
  START or ADMIN); otherwise the analyzer reports `suv_unavailable` and no class.
"""
