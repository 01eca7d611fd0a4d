"""Chest preprocessing: MONOCHROME1, rescale and windowing, pad-not-stretch, labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qcd.analyzers.chest.labels import LABELS, URGENT, canonical, finding_name
from qcd.analyzers.chest.preprocess import (
    PAD_VALUE,
    DisplayHeader,
    pad_to_square,
    prepare_batch,
    read_radiograph,
    to_display,
)
from qcd.errors import InferenceError
from qcd.outputs.codes import concept_for


def test_monochrome1_is_inverted_after_the_window() -> None:
    stored = np.random.default_rng(0).integers(0, 4096, (40, 30)).astype(np.uint16)
    h2 = DisplayHeader("MONOCHROME2", window_center=2048, window_width=4096)
    h1 = DisplayHeader("MONOCHROME1", window_center=2048, window_width=4096)
    assert np.allclose(to_display(stored, h1), 1 - to_display(stored, h2), atol=1e-6)
    # the same radiograph stored both ways reads the same
    assert np.allclose(to_display(4095 - stored, h1), to_display(stored, h2), atol=1e-3)


def test_rescale_then_linear_window() -> None:
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    h = DisplayHeader(rescale_slope=2.0, rescale_intercept=-100.0, window_center=200.5,
                      window_width=201.0)
    d = to_display(stored, h)  # values -100, 100, 300, 500 -> window [100, 301]
    assert d[0, 0] == 0.0 and d[1, 1] == 1.0
    assert d[0, 1] == pytest.approx(0.0, abs=0.01) and d[1, 0] == pytest.approx(1.0, abs=0.01)
    sig = to_display(stored.astype(float), DisplayHeader(window_center=150, window_width=100,
                                                         voi_function="SIGMOID"))
    assert 0 < sig.min() < 0.5 < sig.max() < 1


def test_no_window_uses_auto_window_and_flat_image_is_refused() -> None:
    ramp = np.arange(100, dtype=float).reshape(10, 10)
    d = to_display(ramp, DisplayHeader())
    assert d.min() == 0 and d.max() == 1
    with pytest.raises(InferenceError, match="no contrast"):
        to_display(np.ones((8, 8)), DisplayHeader())
    with pytest.raises(InferenceError, match="photometric"):
        to_display(ramp, DisplayHeader("RGB"))


def test_pad_keeps_the_aspect_ratio_instead_of_stretching() -> None:
    img = torch.zeros(1, 100, 50)
    img[0, 40:60, 15:35] = 1.0  # a 20x20 square in a tall image
    img[0, 0, 0] = 0.5
    x = prepare_batch(img, 64)
    assert x.shape == (1, 1, 64, 64)
    bright = x[0, 0] > 0.5
    rows = torch.nonzero(bright.any(1)).flatten()
    cols = torch.nonzero(bright.any(0)).flatten()
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still square
    assert (x[0, 0, :, :15] == PAD_VALUE).all() and (x[0, 0, :, -15:] == PAD_VALUE).all()
    padded, (top, left) = pad_to_square(torch.zeros(3, 7))
    assert padded.shape == (7, 7) and (top, left) == (2, 0)


def test_prepare_batch_normalises_exposure_away() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 80, 80, generator=g)
    a, b = prepare_batch(img, 32), prepare_batch(0.3 + 0.5 * img, 32)
    assert torch.allclose(a, b, atol=1e-4)
    assert float(a.min()) >= -2 and float(a.max()) <= 2


def test_preprocess_module_does_not_import_pydicom() -> None:
    code = ("import sys, qcd.analyzers.chest.preprocess, training.chest.train; "
            "assert not {'pydicom', 'sqlalchemy', 'highdicom'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).parents[2])


def test_dicom_monochrome1_monochrome2_and_voi_lut_read_alike(tmp_path: Path) -> None:
    from training.chest.demo import write_study

    paths = write_study(tmp_path, ["Effusion"], seed=5, shape=(96, 80))
    m2, m1 = read_radiograph(paths["pa"]), read_radiograph(paths["pa_monochrome1"])
    lut = read_radiograph(paths["cr_voi_lut"])
    assert m1.header.photometric == "MONOCHROME1"
    assert np.allclose(m1.display, m2.display, atol=1e-6)
    assert lut.voi == "voi_lut_sequence" and m2.voi == "window"
    assert m2.spacing_mm is not None and m2.spacing_source == "PixelSpacing"
    assert m2.display.shape == (96, 80)
    a = prepare_batch(torch.from_numpy(m2.display)[None], 64)
    c = prepare_batch(torch.from_numpy(lut.display)[None], 64)
    assert float((a - c).abs().mean()) < 0.05


def test_the_label_set() -> None:
    assert len(LABELS) == 16 and len(set(LABELS)) == 16
    assert LABELS[-2:] == ("COVID-19", "Tuberculosis")
    assert "Pneumothorax" in URGENT and set(URGENT) <= set(LABELS)
    names = [finding_name(label) for label in LABELS]
    assert len(set(names)) == 16 and all(len(n) <= 64 for n in names)
    assert len({concept_for(n).value for n in names}) == 16  # distinct SR concepts
    assert canonical("Pleural_Thickening") == "Pleural thickening"
    assert canonical("Pleural Effusion") == "Effusion"
    assert canonical("TB") == "Tuberculosis" and canonical("Fracture") is None
