"""Server-side rendering: SVG charts are well-formed and escape data, PNGs decode, key
images follow the findings' payloads."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from qcd.web import svg
from qcd.web.aggregates import la_summary
from qcd.web.images import KeyImage, draw_contour, encode_png, key_images, plane, to_uint8


def test_charts_are_valid_xml_and_escape_labels() -> None:
    evil = '<script>alert("x")</script>'
    charts = [
        svg.line_chart({evil: [("2026-01-01", 0.5), ("2026-01-02", None),
                               ("2026-01-03", 0.7)]}, "t"),
        svg.line_chart({}, "empty"),
        svg.stacked_bars([(evil, {"EARL1": 3, "clinical": 1}), ("none", {})],
                         ("clinical", "EARL1"), "bars"),
        svg.histogram([0, 40, 80], [1, 5, 2], evil),
        svg.histogram([0, 40], [0, 0], "no data"),
    ]
    for chart in charts:
        root = ET.fromstring(chart)
        assert root.tag.endswith("svg")
        assert "<script" not in chart


def test_png_round_trip_gray_and_rgb() -> None:
    gray = (np.arange(12 * 7, dtype=np.uint8) * 3).reshape(12, 7)
    image = Image.open(io.BytesIO(encode_png(gray)))
    assert image.mode == "L" and np.array_equal(np.asarray(image), gray)
    rgb = draw_contour(gray, [(1, 1), (1, 5), (8, 5)])
    image = Image.open(io.BytesIO(encode_png(rgb)))
    assert image.mode == "RGB" and image.getpixel((3, 1)) == (255, 0, 0)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 2), np.uint8))


def test_planes_and_window() -> None:
    vol = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    assert plane(vol, "axial", 2).shape == (6, 7)
    assert plane(vol, "sagittal", 3).shape == (5, 6)
    with pytest.raises(ValueError):
        plane(vol, "axial", 5)
    with pytest.raises(ValueError):
        plane(vol, "coronal", 0)
    out = to_uint8(vol[0])
    assert out.dtype == np.uint8 and out.max() == 255
    assert to_uint8(np.zeros((3, 3))).max() == 0


def test_key_images_from_payloads() -> None:
    findings = [
        {"name": "earl_class", "payload": {"stage1_slices_mm": [90.0, 93.0, 96.0]}},
        {"name": "motion_grade", "payload": {"key_slices": [4, 8, 8.0, "x", True]}},
        {"name": "la_volume", "payload": {"contour": {"slice": 8, "points": [[1, 2]]}}},
    ]
    keys = key_images(findings, n_slices=20, spacing_x=4.0)
    assert keys == [KeyImage("sagittal", 23, "earl_class stage1 sagittal 93 mm"),
                    KeyImage("axial", 4, "motion_grade slice 4"),
                    KeyImage("axial", 8, "motion_grade slice 8"),
                    KeyImage("axial", 8, "la_volume contour", contour=True)]
    assert key_images([], n_slices=20) == [KeyImage("axial", 10, "middle slice")]
    assert key_images([], n_slices=None) == []


def test_la_summary() -> None:
    s = la_summary([30.0, 50.0, 70.0, 250.0])
    assert s["n"] == 4 and s["min"] == 30.0 and s["max"] == 250.0 and s["median"] == 60.0
    assert sum(s["histogram"]) == 4 and s["histogram"][-1] == 1 and s["histogram"][0] == 1
    assert la_summary([])["n"] == 0 and "median" not in la_summary([])
    assert la_summary([42.0])["median"] == 42.0


def test_unordered_outline_is_drawn_pixel_by_pixel() -> None:
    gray = np.zeros((10, 10), dtype=np.uint8)
    rgb = draw_contour(gray, [(1, 1), (8, 8), (20, 3)], closed=False)
    red = {(int(r), int(c)) for r, c in zip(*np.nonzero(rgb[:, :, 0] == 255), strict=True)}
    assert red == {(1, 1), (8, 8)}  # no line between them; out-of-image points ignored
