"""`training.chest.train --real-format`: tiny NIH, CheXpert and folder layouts, 1 epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from qcd.analyzers.chest.analyzer import load_model
from qcd.analyzers.chest.labels import LABELS
from qcd.analyzers.chest.model import ChestNet
from qcd.bundles import load_bundle
from qcd.hashing import sha256_file
from training.chest import real
from training.chest.train import (
    DISABLED_THRESHOLD,
    PRESETS,
    main,
    masked_bce,
    real_thresholds,
)

TINY = ["--device", "cpu", "--preset", "small", "--input-size", "32", "--width", "4",
        "--batch", "4", "--epochs", "1", "--workers", "0", "--seed", "5"]
NIH_FINDINGS = ["Effusion", "Cardiomegaly|Mass", "No Finding", "Pneumothorax", "Effusion|Nodule",
                "No Finding"]


def _png(path: Path, seed: int, shape: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 200, shape[1])[None, :]
    arr = np.clip(ramp + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _nih(root: Path, n_patients: int = 9, per_patient: int = 2) -> Path:
    """Data_Entry_2017.csv and images/ for ``n_patients`` (IDs 70001...), one lateral row
    and one corrupt image that must be skipped."""
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
             "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    k = 0
    for p in range(n_patients):
        for f in range(per_patient):
            name = f"{70001 + p:08d}_{f:03d}.png"
            _png(root / "images" / name, k)
            lines.append(f"{name},{NIH_FINDINGS[k % len(NIH_FINDINGS)]},{f},{70001 + p},50,F,"
                         f"PA,40,32,0.143,0.143")
            k += 1
    _png(root / "images" / "00079999_000.png", 99)
    lines.append("00079999_000.png,Hernia,0,79999,50,F,LL,40,32,0.143,0.143")  # lateral
    (root / "images" / "00079998_000.png").write_bytes(b"not a png")
    lines.append("00079998_000.png,Effusion,0,79998,50,F,PA,40,32,0.143,0.143")  # corrupt
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def _spy_split(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], tuple[list[int], ...]]]:
    """Record the patients and the split that the training run used."""
    calls: list[tuple[list[str], tuple[list[int], ...]]] = []
    original = real.split_by_patient

    def spy(patients: list[str], *args: Any) -> tuple[list[int], list[int], list[int]]:
        out = original(patients, *args)
        calls.append((list(patients), out))
        return out

    monkeypatch.setattr(real, "split_by_patient", spy)
    return calls


def _disjoint(patients: list[str], split: tuple[list[int], ...]) -> None:
    sets = [{patients[i] for i in ix} for ix in split]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sorted(i for ix in split for i in ix) == list(range(len(patients)))


def test_split_keeps_each_patient_in_one_set_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    patients = [f"p{int(i)}" for i in rng.integers(0, 40, 300)]
    split = real.split_by_patient(patients, 0.1, 0.2, seed=7)
    _disjoint(patients, split)
    n = len(set(patients))
    assert len({patients[i] for i in split[2]}) == round(0.2 * n)
    assert len({patients[i] for i in split[1]}) == round(0.1 * n)
    assert split == real.split_by_patient(patients, 0.1, 0.2, seed=7)
    assert split != real.split_by_patient(patients, 0.1, 0.2, seed=8)
    _disjoint(["a", "b", "c"], real.split_by_patient(["a", "b", "c"], 0.1, 0.2, seed=1))
    with pytest.raises(ValueError, match="at least 3 patients; the data has 2"):
        real.split_by_patient(["a", "b", "a"], 0.1, 0.2, seed=1)
    with pytest.raises(ValueError, match="sum to less than 1"):
        real.split_by_patient(patients, 0.5, 0.5, seed=1)


def test_masked_labels_add_neither_loss_nor_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, len(LABELS), generator=gen, requires_grad=True)
    target = (torch.rand(6, len(LABELS), generator=gen) > 0.5).float()
    known = (torch.rand(6, len(LABELS), generator=gen) > 0.4).float()
    known[:, LABELS.index("COVID-19")] = 0
    loss = masked_bce(logits, target, known)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[known == 0] == 0) and torch.any(logits.grad[known == 1] != 0)
    flipped = torch.where(known > 0, target, 1 - target)  # other targets where masked
    assert masked_bce(logits, flipped, known).item() == pytest.approx(loss.item())
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known > 0], target[known > 0])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_thresholds_use_only_images_that_state_the_label() -> None:
    i = LABELS.index("Edema")
    probs = np.full((6, len(LABELS)), 0.3)
    truth = np.zeros((6, len(LABELS)))
    known = np.zeros((6, len(LABELS)))
    probs[:, i] = [0.9, 0.8, 0.2, 0.1, 0.95, 0.99]
    truth[:, i] = [1, 1, 0, 0, 0, 0]  # rows 4, 5 unknown: their scores would spoil Youden
    known[:4, i] = 1
    t, source = real_thresholds(probs, truth, known, {"COVID-19": "not in this dataset"})
    assert t["Edema"] == pytest.approx(0.8) and source["Edema"] == "validation"
    assert t["COVID-19"] == DISABLED_THRESHOLD and source["COVID-19"].startswith("disabled")
    assert t["Mass"] == 0.5 and source["Mass"].startswith("default 0.5")


def test_nih_real_mode_writes_a_loadable_bundle_that_states_its_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _nih(tmp_path / "nih")
    calls = _spy_split(monkeypatch)
    out = tmp_path / "models" / "chest" / "2.0.0"
    assert main(["--real-format", "nih", "--real-root", str(root), "--out", str(out), *TINY]) == 0
    (patients, split), = calls
    _disjoint(patients, split)
    assert len(patients) == 18  # lateral and corrupt rows dropped

    bundle = load_bundle(tmp_path / "models", "chest")  # the daemon's loader: sha256 checked
    spec = bundle.spec
    assert bundle.version == spec["version"] == "2.0.0"
    assert spec["data_source"] == "real: nih, 18 images, 9 patients"
    data = spec["training"]["data"]
    assert data["kind"] == "real" and data["unreadable_images_skipped"] == 1
    assert data["label_counts"]["COVID-19"] == {"known": 0, "positives": 0}
    assert data["label_counts"]["Effusion"]["known"] == 18
    sets = spec["training"]["split"]
    assert sum(sets[k]["images"] for k in ("train", "validation", "held_out")) == 18
    assert sum(sets[k]["patients"] for k in ("train", "validation", "held_out")) == 9
    not_trained = spec["not_trained"]["labels"]
    assert not_trained["COVID-19"] == not_trained["Tuberculosis"] == "not in this dataset"
    assert not_trained.get("Hernia") == "no positive training image"  # only on the lateral
    assert "Effusion" not in not_trained
    per = spec["metrics"]["held_out_real"]["per_label"]
    assert per["COVID-19"] == {"trained": False, "reason": "not in this dataset", "auc": None,
                               "known": 0, "positives": 0}
    assert per["Effusion"]["trained"] and "auc" in per["Effusion"]
    assert spec["thresholds"]["COVID-19"] == DISABLED_THRESHOLD
    assert "simulation" not in spec and "held_out_simulated" not in spec["metrics"]
    assert "70001" not in json.dumps(spec)  # patient IDs stay out of the bundle
    card = (out / "MODEL_CARD.md").read_text()
    assert "real: nih, 18 images, 9 patients" in card and "NIH ChestX-ray14" in card
    assert "| COVID-19 | 0 | 0 | not trained on this data | disabled |" in card

    model = load_model(bundle)  # the analyzer's loader: labels and preprocessing checked
    with torch.inference_mode():
        p = torch.sigmoid(model(torch.randn(2, 1, 32, 32)))
    assert torch.all(p[:, LABELS.index("COVID-19")] < 1e-6)  # disabled output, never flagged


def _chexpert(root: Path, n_patients: int = 6) -> Path:
    header = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
              "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,"
              "Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices")
    lines = [header]
    for p in range(n_patients):
        for study in (1, 2):
            rel = f"CheXpert-v1.0-small/train/patient{p + 1:05d}/study{study}/view1_frontal.png"
            _png(root / rel.split("/", 1)[1], p * 2 + study)
            effusion = "1.0" if (p + study) % 2 else "0.0"
            edema = "-1.0" if p % 3 == 0 else ("1.0" if study == 1 else "0.0")
            lines.append(f"{rel},F,60,Frontal,AP,,,0.0,,,{edema},,,,0.0,{effusion},,,1.0")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_chexpert_uncertain_labels_are_masked_and_unstated_labels_not_trained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _chexpert(tmp_path / "chexpert")
    calls = _spy_split(monkeypatch)
    out = tmp_path / "models" / "chest" / "2.1.0"
    assert main(["--real-format", "chexpert", "--real-root", str(root), "--out", str(out),
                 *TINY]) == 0
    (patients, split), = calls
    assert set(patients) == {f"patient{p:05d}" for p in range(1, 7)}
    _disjoint(patients, split)
    spec = load_bundle(tmp_path / "models", "chest", "2.1.0").spec
    data = spec["training"]["data"]
    assert spec["data_source"] == "real: chexpert, 12 images, 6 patients"
    assert data["uncertain_policy"].startswith("U-Ignore")
    assert data["label_counts"]["Edema"]["known"] == 8  # 4 uncertain rows masked
    assert data["label_counts"]["Atelectasis"]["known"] == 0  # blank: not mentioned
    assert data["blank_policy"].startswith("blank (not mentioned) labels are masked")
    negative = real.label_counts(real.read_samples("chexpert", root, blank="negative"))
    assert negative["Atelectasis"] == {"known": 12, "positives": 0}
    assert negative["Edema"]["known"] == 8  # uncertain stays masked under U-Ignore
    not_trained = spec["not_trained"]["labels"]
    for label in ("Emphysema", "Nodule", "Hernia", "COVID-19", "Tuberculosis"):
        assert not_trained[label] == "not in this dataset"
    assert not_trained["Pneumothorax"] == "no positive training image"  # all 0.0
    assert "Effusion" not in not_trained
    card = (out / "MODEL_CARD.md").read_text()
    assert "CheXpert" in card and "U-Ignore" in card
    assert "urgent label(s) Pneumothorax are not trained" in card


def test_folder_layout_uses_the_patient_column(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    rows = ["path,labels,patient"]
    for k in range(8):
        _png(site / f"img{k}.png", k)
        rows.append(f"img{k}.png,{'Effusion' if k % 2 else 'No Finding'},P{k // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    calls = _spy_split(monkeypatch)
    out = tmp_path / "models" / "chest" / "3.0.0"
    assert main(["--real-format", "folder", "--real-root", str(site), "--real-csv",
                 str(tmp_path / "labels.csv"), "--out", str(out), *TINY]) == 0
    (patients, split), = calls
    _disjoint(patients, split)
    spec = load_bundle(tmp_path / "models", "chest").spec
    assert spec["data_source"] == "real: folder, 8 images, 4 patients"
    assert "COVID-19" in spec["not_trained"]["labels"]  # stated, but never positive
    assert spec["not_trained"]["labels"]["COVID-19"] == "no positive training image"


def test_init_from_fine_tunes_a_bundle_and_keeps_its_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sim = tmp_path / "models" / "chest" / "1.0.0"
    model = ChestNet(len(LABELS), width=4)
    sim.mkdir(parents=True)
    weights = sim / "weights.pt"
    torch.save(model.state_dict(), weights)
    (sim / "model.json").write_text(json.dumps({
        "name": "chest", "version": "1.0.0", "weights": "weights.pt",
        "sha256": sha256_file(weights), "labels": list(LABELS),
        "input": {"size": 32, "width": 4}, "preprocessing": "chest-pre-1"}))
    (sim / "MODEL_CARD.md").write_text("fixture\n")
    root = _nih(tmp_path / "nih")
    out = tmp_path / "models" / "chest" / "1.1.0"
    args = ["--real-format", "nih", "--real-root", str(root), "--out", str(out), "--device",
            "cpu", "--preset", "small", "--batch", "4", "--epochs", "1", "--workers", "0"]
    assert main([*args, "--init-from", str(sim)]) == 0
    spec = load_bundle(tmp_path / "models", "chest", "1.1.0").spec
    init = spec["training"]["initialised_from"]
    assert init == {"bundle": "chest/1.0.0", "sha256": sha256_file(weights), "data": "simulated"}
    assert spec["input"]["size"] == 32 and spec["input"]["width"] == 4
    assert spec["training"]["lr"] == pytest.approx(PRESETS["small"]["lr"] / 4)
    assert "fine-tuned from `chest/1.0.0`" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(SystemExit):
        main([*args, "--init-from", str(sim), "--width", "8"])
    with pytest.raises(SystemExit):
        main([*args, "--init-from", str(out)])  # would overwrite the weights it starts from


@pytest.mark.parametrize("argv", [
    ["--real-format", "nih"],  # no --real-root, no --out
    ["--real-format", "nih", "--real-root", "x", "--out", "models/chest/latest"],
])
def test_real_mode_refuses_incomplete_or_unversioned_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)


def test_nih_images_in_the_kaggle_folders_are_found(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    _png(root / "images_001" / "images" / "00000001_000.png", 1)
    _png(root / "images_002" / "images" / "00000002_000.png", 2)
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID,View Position\n"
        "00000001_000.png,Mass,1,PA\n00000002_000.png,No Finding,2,AP\n")
    rows = real.read_samples("nih", root)
    assert [r.path.parent.parent.name for r in rows] == ["images_001", "images_002"]
    with pytest.raises(ValueError, match="no frontal images with labels found"):
        real.read_samples("nih", root, images=tmp_path)
    with pytest.raises(ValueError, match="valid: nih, chexpert, folder"):
        real.read_samples("mimic", root)


def test_inputs_are_the_analyzers_preprocessing(tmp_path: Path) -> None:
    """DICOM and PNG go through the daemon's read_radiograph/prepare_batch, one image each."""
    from qcd.analyzers.chest.preprocess import prepare_batch, read_radiograph
    from training.chest.demo import write_study

    dcm = write_study(tmp_path / "dcm", ["Effusion"], seed=3, shape=(48, 40))["pa"]
    _png(tmp_path / "a.png", 1)
    samples = [real.Sample(dcm, (0.0,) * 16, (True,) * 16, "p1"),
               real.Sample(tmp_path / "a.png", (0.0,) * 16, (True,) * 16, "p2"),
               real.Sample(tmp_path / "missing.png", (0.0,) * 16, (True,) * 16, "p3")]
    x, ok, errors = real.prepare_inputs(samples, 32, workers=1)
    assert ok == [0, 1] and len(errors) == 1 and errors[0].startswith("missing.png")
    expected = prepare_batch(torch.from_numpy(read_radiograph(dcm).display)[None], 32)
    assert x.dtype == torch.float16 and x.shape == (2, 1, 32, 32)
    assert torch.equal(x[0], expected[0].half())
    assert torch.equal(x[1], prepare_batch(
        torch.from_numpy(real.load_display(tmp_path / "a.png"))[None], 32)[0].half())


def test_shipped_simulated_card_is_still_what_card_py_writes() -> None:
    from qcd.bundles import SHIPPED_MODELS
    from training.chest.card import model_card

    folder = SHIPPED_MODELS / "chest" / "1.0.0"
    spec = json.loads((folder / "model.json").read_text())
    assert model_card(spec) == (folder / "MODEL_CARD.md").read_text()
