"""Readers for real chest X-ray layouts (NIH, CheXpert, DICOM/PNG folders) on tiny fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qcd.analyzers.chest.labels import LABELS
from training.chest.real import (
    LabelTableError,
    load_display,
    read_chexpert,
    read_folder,
    read_nih,
)


def _png(path: Path, value: int = 128, bits16: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((16, 12), value * (257 if bits16 else 1),
                  dtype=np.uint16 if bits16 else np.uint8)
    arr[4:8, 3:6] = 0
    Image.fromarray(arr).save(path)
    return path


def _on(sample: object) -> set[str]:
    return {label for label, t in zip(LABELS, sample.target, strict=True) if t}


def test_nih_data_entry_layout(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png",
                 "00000003_000.png"):
        _png(images / name)
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143\n"
        "00000001_001.png,No Finding,1,1,58,M,AP,2894,2729,0.143,0.143\n"
        "00000002_000.png,Pleural_Thickening,0,2,81,F,PA,2500,2048,0.168,0.168\n"
        "00000003_000.png,Hernia,0,3,70,F,LL,2500,2048,0.168,0.168\n"
        "00000009_000.png,Mass,0,9,70,F,PA,2500,2048,0.168,0.168\n")  # image missing
    rows = read_nih(csv, images)
    assert [r.path.name for r in rows] == ["00000001_000.png", "00000001_001.png",
                                           "00000002_000.png"]  # lateral and missing dropped
    assert _on(rows[0]) == {"Cardiomegaly", "Emphysema"}
    assert _on(rows[1]) == set() and rows[1].view == "AP"
    assert _on(rows[2]) == {"Pleural thickening"}
    known = dict(zip(LABELS, rows[0].known, strict=True))
    assert known["Hernia"] and not known["COVID-19"] and not known["Tuberculosis"]
    assert rows[0].patient == rows[1].patient == "1"


def test_nih_unknown_label_and_missing_column_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID\na.png,Broken leg,1\n")
    with pytest.raises(LabelTableError, match="unknown finding"):
        read_nih(bad, tmp_path)
    bad.write_text("Image Index,Labels\na.png,Mass\n")
    with pytest.raises(LabelTableError, match="Finding Labels"):
        read_nih(bad, tmp_path)


def test_chexpert_csv_with_uncertain_policies(tmp_path: Path) -> None:
    root = tmp_path / "CheXpert-v1.0-small"
    _png(root / "train/patient00001/study1/view1_frontal.jpg".replace(".jpg", ".png"))
    _png(root / "train/patient00002/study1/view1_frontal.png")
    _png(root / "train/patient00002/study1/view2_lateral.png")
    csv = root / "train.csv"
    csv.write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
        "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,"
        "Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.png,F,68,Frontal,AP,"
        "1.0,,,,,,,,,0.0,,,,1.0\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.png,F,87,Frontal,PA,"
        ",,-1.0,1.0,,-1.0,,,,,1.0,,1.0,\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.png,F,87,Lateral,,"
        ",,-1.0,1.0,,-1.0,,,,,1.0,,1.0,\n")
    rows = read_chexpert(csv, root)
    assert len(rows) == 2 and rows[1].patient == "patient00002"
    assert _on(rows[0]) == set()
    known0 = {label for label, k in zip(LABELS, rows[0].known, strict=True) if k}
    assert known0 == {"Pneumothorax"}
    assert _on(rows[1]) == {"Effusion"}  # uncertain Cardiomegaly/Edema ignored (masked)
    ones = read_chexpert(csv, root, uncertain="ones")
    assert _on(ones[1]) == {"Effusion", "Cardiomegaly", "Edema"}
    zeros = read_chexpert(csv, root, uncertain="zeros")
    assert _on(zeros[1]) == {"Effusion"} and zeros[1].known[LABELS.index("Edema")]
    with pytest.raises(ValueError, match="uncertain"):
        read_chexpert(csv, root, uncertain="maybe")


def test_folder_by_subfolder_and_by_label_table(tmp_path: Path) -> None:
    from training.chest.demo import write_study

    _png(tmp_path / "site" / "No Finding" / "n1.png")
    _png(tmp_path / "site" / "Pneumothorax" / "p1.png")
    dcm = write_study(tmp_path / "tmpdcm", ["Effusion"], seed=3, shape=(48, 40))["pa"]
    (tmp_path / "site" / "Effusion").mkdir()
    dcm.rename(tmp_path / "site" / "Effusion" / "e1.dcm")
    rows = {r.path.name: r for r in read_folder(tmp_path / "site")}
    assert _on(rows["n1.png"]) == set() and _on(rows["p1.png"]) == {"Pneumothorax"}
    assert _on(rows["e1.dcm"]) == {"Effusion"} and all(rows["e1.dcm"].known)
    table = tmp_path / "labels.csv"
    table.write_text("path,labels\nPneumothorax/p1.png,Pneumothorax|TB\n"
                     "No Finding/n1.png,No Finding\n")
    listed = read_folder(tmp_path / "site", table)
    assert _on(listed[0]) == {"Pneumothorax", "Tuberculosis"} and _on(listed[1]) == set()
    table.write_text("path,labels\nPneumothorax/p1.png,Broken leg\n")
    with pytest.raises(LabelTableError, match="unknown label"):
        read_folder(tmp_path / "site", table)
    _png(tmp_path / "bad" / "Holiday" / "x.png")
    with pytest.raises(LabelTableError, match="not a label"):
        read_folder(tmp_path / "bad")
    d = load_display(tmp_path / "site" / "Effusion" / "e1.dcm")
    assert d.shape == (48, 40) and 0 <= d.min() and d.max() <= 1


def test_load_display_png_8_and_16_bit(tmp_path: Path) -> None:
    a = load_display(_png(tmp_path / "a.png", 200))
    b = load_display(_png(tmp_path / "b.png", 200, bits16=True))
    assert a.dtype == np.float32 and a.max() == pytest.approx(200 / 255)
    assert np.allclose(a, b, atol=1e-3)
