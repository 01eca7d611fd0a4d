"""Atrium post-processing (threshold, closing, empty-slice suppression, largest component)
and the pure preprocessing it is paired with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcd.analyzers.atrium.postprocess import (
    PostprocessSettings,
    close,
    largest_component,
    postprocess,
    segment,
    structuring_element,
    suppress_small_slices,
)
from qcd.analyzers.atrium.preprocess import grid_shape, normalise, prepare, restore, stack_context

ISO = (1.25, 1.25, 1.25)


def blob(shape: tuple[int, int, int] = (20, 40, 40)) -> np.ndarray:
    """An ellipsoid cut flat at both ends (every slice well above 20 mm2)."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    inside = ((z - 10) / 6) ** 2 + ((y - 20) / 10) ** 2 + ((x - 20) / 10) ** 2 <= 1
    return np.asarray(inside & (z >= 5) & (z <= 15))


def test_threshold_is_inclusive_and_configurable() -> None:
    prob = blob().astype(np.float32) * 0.6
    assert postprocess(prob, ISO).sum() == blob().sum()
    assert not postprocess(prob, ISO, PostprocessSettings(threshold=0.7)).any()


def test_closing_fills_pinholes_but_keeps_the_border() -> None:
    mask = blob()
    holed = mask.copy()
    holed[10, 20, 20] = holed[10, 21, 20] = False
    assert np.array_equal(close(holed, ISO, 2.5), mask)
    edge = np.zeros((5, 10, 10), bool)
    edge[:, :4, :4] = True  # touches the volume border: closing must not erode it
    assert np.array_equal(close(edge, ISO, 2.5), edge)


def test_structuring_element_is_physical() -> None:
    assert structuring_element((1.25, 1.25, 1.25), 2.5).shape == (5, 5, 5)
    thick = structuring_element((8.0, 1.25, 1.25), 2.5)
    assert thick.shape == (1, 5, 5)  # no z neighbour within 2.5 mm of 8 mm slices


def test_small_slices_are_suppressed() -> None:
    mask = blob()
    mask[2, 5, 5] = True  # a speck of 1.56 mm2, far below 20 mm2
    out = suppress_small_slices(mask, ISO, 20.0)
    assert not out[2].any() and np.array_equal(out[4:], mask[4:])


def test_largest_component_wins_and_empty_stays_empty() -> None:
    mask = blob()
    other = np.zeros_like(mask)
    other[0:3, 0:3, 30:33] = True
    assert np.array_equal(largest_component(mask | other), mask)
    empty = np.zeros((4, 4, 4), bool)
    assert not largest_component(empty).any() and not postprocess(empty * 0.0, ISO).any()


def test_postprocess_removes_a_distant_blob() -> None:
    prob = blob().astype(np.float32)
    prob[15:19, 30:38, 30:38] = 0.9  # a separate bright vessel, large enough per slice
    assert np.array_equal(postprocess(prob, ISO), blob())
    with pytest.raises(ValueError, match="z, y, x"):
        postprocess(prob[0], ISO)


def test_normalise_is_scale_free_and_clipped() -> None:
    v = torch.rand(4, 16, 16)
    assert torch.allclose(normalise(v), normalise(v * 1234.5), atol=1e-5)
    assert float(normalise(v).max()) <= 1.5 and float(normalise(v).min()) >= 0
    assert not normalise(torch.zeros(2, 4, 4)).any()


def test_context_stack_is_clamped_at_the_ends() -> None:
    v = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    s = stack_context(v, 1)
    assert s.shape == (4, 3, 2, 2)
    assert s[0, :, 0, 0].tolist() == [0, 0, 1] and s[3, :, 0, 0].tolist() == [2, 3, 3]


def test_prepare_resamples_pads_and_restores() -> None:
    vol = np.random.default_rng(0).random((6, 100, 90)).astype(np.float32)
    p = prepare(vol, (2.0, 0.625, 2.5), context=1)
    assert p.grid_shape == grid_shape((100, 90), (0.625, 2.5)) == (50, 180)
    assert p.x.shape == (6, 3, 64, 192) and p.original_shape == (100, 90)
    back = restore(torch.full((6, 64, 192), 0.7), p)
    assert back.shape == vol.shape and np.allclose(back, 0.7)


def test_segment_runs_the_whole_pipeline_with_any_predictor() -> None:
    truth = blob()

    def oracle(x: torch.Tensor) -> torch.Tensor:  # logits from the truth, padded grid
        t = torch.zeros(x.shape[0], 1, *x.shape[2:])
        t[:, 0, :40, :40] = torch.from_numpy(truth).float()
        return (t - 0.5) * 20

    prob, mask = segment(oracle, np.random.default_rng(1).random(truth.shape), ISO, 1)
    assert prob.shape == truth.shape and np.array_equal(mask, truth)
