"""The chest phantom shows each finding by its radiological sign (simulate.py)."""

from __future__ import annotations

import torch

from qcd.analyzers.chest.labels import LABELS, NIH_PREVALENCE
from training.chest.simulate import (
    MU_PER_MM,
    make_batch,
    measure_ctr,
    sample_labels,
    simulate,
)

N, SHAPE = 6, (192, 192)


def _labels(*names: str, n: int = N) -> torch.Tensor:
    y = torch.zeros(n, len(LABELS))
    for name in names:
        y[:, LABELS.index(name)] = 1
    return y


def _sim(*names: str, seed: int = 3) -> object:
    torch.set_num_threads(1)
    return simulate(_labels(*names), torch.Generator().manual_seed(seed), SHAPE)


def test_attenuation_values_are_the_60kev_ones() -> None:
    assert MU_PER_MM["soft"] * 10 == 0.217
    assert MU_PER_MM["lung"] * 10 == 0.053
    assert MU_PER_MM["bone"] * 10 == 0.604


def test_cardiomegaly_has_ctr_above_half_and_normal_below() -> None:
    normal, big = _sim(), _sim("Cardiomegaly")
    ctr_n = measure_ctr(normal.maps["heart"], normal.maps["lung"], normal.pixel_mm)
    ctr_c = measure_ctr(big.maps["heart"], big.maps["lung"], big.pixel_mm)
    assert (ctr_n < 0.5).all(), ctr_n
    assert (ctr_c > 0.5).all(), ctr_c
    assert torch.allclose(ctr_c, big.params["ctr"], atol=0.03)  # measured = drawn


def test_labels_do_not_move_the_anatomy() -> None:
    a, b = _sim(), _sim("Nodule", "Effusion")
    assert torch.equal(a.maps["heart"], b.maps["heart"])
    assert torch.equal(a.maps["lung"], b.maps["lung"])


def _cp_box(batch: object, i: int, side: float) -> tuple[slice, slice]:
    """A ~22 mm box in the lateral costophrenic angle of one lung."""
    lung = batch.maps["lung"][i] > 1
    half = lung[:, : SHAPE[1] // 2] if side < 0 else lung[:, SHAPE[1] // 2:]
    offset = 0 if side < 0 else SHAPE[1] // 2
    cols = torch.nonzero(half.any(0)).flatten() + offset
    rows = torch.nonzero(half.any(1)).flatten()
    bottom, k = int(rows.max()), 10
    if side < 0:
        c0 = int(cols.min())
        return slice(bottom - k, bottom + 1), slice(c0, c0 + k)
    c1 = int(cols.max())
    return slice(bottom - k, bottom + 1), slice(c1 - k, c1 + 1)


def test_effusion_fills_and_blunts_the_costophrenic_angle() -> None:
    clear, wet = _sim(), _sim("Effusion")
    for i in range(N):
        side = float(wet.params["effusion_side"][i])
        rows, cols = _cp_box(wet, i, side)
        aerated_clear = clear.maps["aerated"][i][rows, cols].sum()
        aerated_wet = wet.maps["aerated"][i][rows, cols].sum()
        assert aerated_wet < 0.5 * aerated_clear, (i, aerated_wet, aerated_clear)
        assert wet.maps["fluid"][i][rows, cols].sum() > 0
        # the meniscus: fluid reaches higher at the lateral wall than near the centre
        fluid = wet.maps["fluid"][i] > 5
        lung = clear.maps["lung"][i] > 1
        cols_lung = torch.nonzero(lung.any(0)).flatten()
        lateral = int(cols_lung.min()) + 6 if side < 0 else int(cols_lung.max()) - 6
        centre = (int(cols_lung.min()) + int(cols_lung.max())) // 2
        centre = (int(cols_lung.min()) + centre) // 2 if side < 0 else (
            centre + int(cols_lung.max())) // 2
        def top(c: int) -> int:
            return int(torch.nonzero(fluid[:, c]).min()) if fluid[:, c].any() else 10**6

        assert top(lateral) <= top(centre), (i, top(lateral), top(centre))


def test_pneumothorax_rim_is_air_without_lung_markings() -> None:
    clear, ptx = _sim(), _sim("Pneumothorax")
    rim = ptx.maps["pneumothorax"] > 5
    assert rim.flatten(1).any(1).all()
    # where the beam crosses only the air rim (no collapsed lung in front or behind)
    pure = rim & (ptx.maps["pneumothorax"] >= 0.95 * clear.maps["lung"])
    assert pure.flatten(1).any(1).all()
    # inside the rim the lung is gone (air) and no vessel markings remain
    assert (ptx.maps["aerated"][rim] < clear.maps["aerated"][rim]).float().mean() > 0.9
    markings_clear = clear.maps["opacity"][pure].mean()
    markings_ptx = ptx.maps["opacity"][pure].mean()
    assert markings_ptx < 0.2 * markings_clear, (markings_ptx, markings_clear)
    # and the side is the drawn one
    for i in range(N):
        cols = torch.nonzero(rim[i].any(0)).flatten().float().mean()
        assert (cols > SHAPE[1] / 2) == (ptx.params["ptx_side"][i] > 0)


def test_nodules_are_at_most_30mm_and_masses_larger() -> None:
    base = _sim()
    nod, mass = _sim("Nodule"), _sim("Mass")
    d_nod = (nod.maps["opacity"] - base.maps["opacity"]).flatten(1).amax(1)
    d_mass = (mass.maps["opacity"] - base.maps["opacity"]).flatten(1).amax(1)
    assert (d_nod <= 30.0 + 1e-3).all(), d_nod  # the longest chord of a sphere: its diameter
    assert (d_mass > 30.0).float().mean() >= 0.8, d_mass


def test_lungs_are_darker_than_the_mediastinum_and_bone_brighter() -> None:
    b = _sim()
    lung = b.maps["lung"] > 60
    mid = slice(SHAPE[1] // 2 - 3, SHAPE[1] // 2 + 3)
    for i in range(N):
        assert b.display[i][lung[i]].mean() < b.display[i][:, mid].mean()


def test_every_finding_changes_the_image() -> None:
    base = _sim()
    for label in LABELS:
        other = _sim(label)
        assert (other.display - base.display).abs().amax(dim=(1, 2)).min() > 0.02, label


def test_label_frequencies_follow_nih() -> None:
    y = sample_labels(20000, torch.Generator().manual_seed(0))
    for i, label in enumerate(LABELS):
        p = NIH_PREVALENCE[label]
        assert abs(float(y[:, i].mean()) - p) < 4 * (p * (1 - p) / 20000) ** 0.5 + 1e-3, label
    floored = sample_labels(20000, torch.Generator().manual_seed(0), floor=0.05)
    assert float(floored[:, LABELS.index("Hernia")].mean()) > 0.04


def test_make_batch_shapes_and_range() -> None:
    b = make_batch(4, torch.Generator().manual_seed(1), 0.1, (128, 104))
    assert b.display.shape == (4, 128, 104) and b.labels.shape == (4, 16)
    assert float(b.display.min()) >= 0 and float(b.display.max()) <= 1
