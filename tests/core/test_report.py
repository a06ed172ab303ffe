"""Result tables and heatmap pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zal3d_core.report import colorize, csv_text, depth_image, heatmap_panel, markdown_tables


def test_colorize_ends_and_nan():
    values = np.array([[0.0, 1.0], [np.nan, 0.5]])
    rgb = colorize(values)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 4]
    assert rgb[0, 1].tolist() == [252, 255, 164]
    assert rgb[1, 0].tolist() == [90, 90, 90]


def test_colorize_is_monotone_in_brightness():
    rgb = colorize(np.linspace(0, 1, 50)[None, :]).astype(int).sum(axis=-1)[0]
    assert (np.diff(rgb) >= 0).all()


def test_colorize_clips_to_range():
    rgb = colorize(np.array([[-5.0, 5.0]]), vmin=0.0, vmax=1.0)
    assert rgb[0, 0].tolist() == [0, 0, 4]
    assert rgb[0, 1].tolist() == [252, 255, 164]


def test_heatmap_panel_layout():
    image = np.full((20, 30, 3), 100, np.uint8)
    gt = np.zeros((20, 30), bool)
    gt[5:10, 5:10] = True
    amap = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    amap[0, :] = np.nan
    panel = heatmap_panel(image, gt, amap)
    assert panel.shape == (20, 3 * 30 + 8, 3)
    assert (panel[:, :30] == 100).all()
    # Off-object pixels keep the input colour in the overlay panel.
    assert (panel[0, 68:98] == 100).all()
    # The defect outline is cyan in the truth panel.
    assert panel[5, 34 + 5].tolist() == [0, 255, 255]


def test_heatmap_panel_without_truth_has_two_panels():
    image = np.full((10, 12, 3), 50, np.uint8)
    panel = heatmap_panel(image, None, np.zeros((10, 12), np.float32))
    assert panel.shape == (10, 2 * 12 + 4, 3)
    assert (panel[:, 12:16] == 255).all()


def test_heatmap_panel_shape_mismatch():
    with pytest.raises(ValueError, match=r"image has shape \(4, 4\), but the anomaly map has \(5, 5\)"):
        heatmap_panel(np.zeros((4, 4, 3), np.uint8), None, np.zeros((5, 5)))


def test_depth_image_near_is_bright():
    xyz = np.zeros((2, 2, 3), np.float32)
    xyz[..., 2] = [[1.0, 2.0], [np.nan, 1.5]]
    grey = depth_image(xyz)[..., 0].astype(int)
    assert grey[0, 0] > grey[1, 1] > grey[0, 1]
    assert grey[1, 0] == 0


def test_markdown_tables_layout_and_mean():
    rows = [
        {"method": "btf", "train": "a", "test": "b", "au_pro": 0.5, "image_auroc": 0.75},
        {"method": "btf", "train": "a", "test": "c", "au_pro": 0.7, "image_auroc": math.nan},
        {"method": "btf", "train": "b", "test": "a", "au_pro": 0.9, "image_auroc": 1.0},
    ]
    text = markdown_tables(rows)
    lines = text.splitlines()
    assert "### btf: AU-PRO (FPR limit 0.3)" in lines
    header = lines[lines.index("### btf: AU-PRO (FPR limit 0.3)") + 2]
    assert header == "| train \\ test | b | c | a | mean |"
    assert "| a | 0.500 | 0.700 | - | 0.600 |" in lines
    assert "| b | - | - | 0.900 | 0.900 |" in lines
    # NaN is shown as n/a and left out of the mean.
    assert "| a | 0.750 | n/a | - | 0.750 |" in lines


def test_markdown_tables_method_comparison():
    rows = [
        {"method": "btf", "train": "a", "test": "b", "au_pro": 0.4, "image_auroc": 0.6},
        {"method": "3dzal", "train": "a", "test": "b", "au_pro": 0.6, "image_auroc": 0.7},
    ]
    lines = markdown_tables(rows).splitlines()
    assert "### Mean over test classes, by method" in lines
    assert "| btf | 0.400 | 0.600 |" in lines
    assert "| 3dzal | 0.600 | 0.700 |" in lines


def test_csv_text_blank_for_none():
    text = csv_text([{"a": 1, "b": None}, {"a": 2.5, "b": "x"}], ("a", "b"))
    assert text == "a,b\n1,\n2.5,x\n"
