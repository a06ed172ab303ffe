"""Tests of zal3d_core.preprocess: plane removal, clustering, resizing, samples."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from zal3d_core._kernels import _ransac
from zal3d_core.datasets import Sample
from zal3d_core.io import read_organized
from zal3d_core.preprocess import (
    PlaneFit,
    _nearest_indices,
    fit_plane,
    largest_cluster,
    preprocess_sample,
    remove_background,
    resize_mask,
    resize_organized,
    resize_rgb,
)

BOX = (slice(20, 40), slice(30, 55))  # 20 x 25 = 500 pixels
BOX_HOLE = (25, 35)


def tilted_scene(scale=1.0, slope=(0.2, -0.1), height=0.01, seed=0, missing=np.nan):
    """A 60 x 80 tilted plane with 1 mm pixel spacing and a box ``height`` high on it.

    Returns the cloud, the (60, 80) mask of the box pixels that hold a point, and the
    true plane (a, b, c, d) with unit normal and c > 0.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:60, 0:80]
    x = cols * 1e-3
    y = rows * 1e-3
    z = 0.5 + slope[0] * x + slope[1] * y + rng.uniform(-2e-5, 2e-5, x.shape)
    box = np.zeros(x.shape, bool)
    box[BOX] = True
    z = z + height * box
    xyz = (np.dstack([x, y, z]) * scale).astype(np.float32)
    # Holes in the background and one in the box.
    xyz[5, 5:10] = missing
    xyz[BOX_HOLE] = missing
    box[BOX_HOLE] = False
    normal = np.array([-slope[0], -slope[1], 1.0])
    norm = np.linalg.norm(normal)
    plane = np.array([*(normal / norm), -0.5 * scale / norm])
    return xyz, box, plane


def valid_of(xyz):
    return ~np.isnan(xyz).any(axis=2)


# ---------------------------------------------------------------------------------------
# RANSAC kernel against a slow reference


def reference_ransac(points, uniforms, threshold):
    """The kernel's algorithm, written plainly with NumPy."""
    m = len(points)
    order = list(range(m))
    best, best_count, best_cost = np.zeros(4), -1, np.inf
    for draws in uniforms:
        for j, u in enumerate(draws):
            k = min(j + int(u * (m - j)), m - 1)
            order[j], order[k] = order[k], order[j]
        sample = points[order[: len(draws)]]
        if len(draws) == 3:
            normal = np.cross(sample[1] - sample[0], sample[2] - sample[0])
            scale = np.linalg.norm(sample[1] - sample[0]) * np.linalg.norm(
                sample[2] - sample[0]
            )
            if not np.linalg.norm(normal) > 1e-9 * scale:
                continue
            normal = normal / np.linalg.norm(normal)
            offset = -normal @ sample[0]
        else:
            mean = sample.mean(axis=0)
            values, vectors = np.linalg.eigh((sample - mean).T @ (sample - mean))
            if not values[1] > 1e-9 * values[2]:
                continue
            normal = vectors[:, 0]
            offset = -normal @ mean
        distances = np.abs(points @ normal + offset)
        inside = distances <= threshold
        count, cost = int(inside.sum()), float((distances[inside] ** 2).sum())
        if count > best_count or (count == best_count and cost < best_cost):
            best, best_count, best_cost = np.array([*normal, offset]), count, cost
    return best, best_count


@pytest.mark.parametrize("ransac_n", [3, 4, 7])
def test_ransac_kernel_matches_reference(ransac_n):
    rng = np.random.default_rng(ransac_n)
    plane_points = np.column_stack(
        [rng.uniform(-1, 1, (60, 2)), rng.normal(0, 0.01, 60)]
    )
    outliers = rng.uniform(-1, 1, (25, 3))
    points = np.ascontiguousarray(np.vstack([plane_points, outliers]))
    uniforms = rng.random((40, ransac_n))
    plane, count = _ransac.ransac_plane(points, uniforms, 0.03)
    expected, expected_count = reference_ransac(points, uniforms, 0.03)
    assert count == expected_count
    assert count >= 55
    # eigh may return either sign of the normal.
    sign = np.sign(plane[2] * expected[2])
    np.testing.assert_allclose(plane * sign, expected, atol=1e-12)


def test_ransac_kernel_degenerate_samples():
    line = np.ascontiguousarray(
        np.column_stack([np.arange(10.0), np.zeros(10), np.zeros(10)])
    )
    plane, count = _ransac.ransac_plane(
        line, np.random.default_rng(0).random((20, 3)), 0.1
    )
    assert count == -1
    np.testing.assert_array_equal(plane, np.zeros(4))


# ---------------------------------------------------------------------------------------
# fit_plane on unorganized points


def test_fit_plane_recovers_plane_with_outliers():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.1, 0.1, (700, 2))
    z = 0.3 + 0.5 * xy[:, 0] - 0.2 * xy[:, 1] + rng.normal(0, 1e-5, 700)
    # Outliers lie 0.03 or more above the plane, out of reach of the threshold.
    outliers = rng.uniform(-0.1, 0.1, (300, 3)) + [0, 0, 0.5]
    points = np.vstack([np.column_stack([xy, z]), outliers]).astype(np.float64)
    fit = fit_plane(points, seed=1)
    truth = np.array([-0.5, 0.2, 1.0]) / np.linalg.norm([-0.5, 0.2, 1.0])
    assert isinstance(fit, PlaneFit)
    np.testing.assert_allclose(fit.normal, truth, atol=1e-4)
    np.testing.assert_allclose(fit.coefficients[3], -0.3 * truth[2], atol=1e-5)
    assert fit.n_points == 1000
    assert fit.n_inliers == 700
    assert fit.spacing > 0
    assert fit.distance == pytest.approx(3 * fit.spacing)
    residuals = fit.signed_distance(points[:700])
    assert np.abs(residuals).max() < 1e-4


def test_fit_plane_absolute_distance():
    rng = np.random.default_rng(3)
    points = np.column_stack([rng.uniform(-1, 1, (200, 2)), np.full(200, 2.0)])
    fit = fit_plane(points, distance=0.01, ransac_n=5, iterations=50)
    np.testing.assert_allclose(fit.coefficients, [0, 0, 1, -2], atol=1e-12)
    assert fit.distance == 0.01
    assert np.isnan(fit.spacing)
    assert fit.n_inliers == 200


@pytest.mark.parametrize(("n_points", "ransac_n"), [(0, 3), (2, 3), (100, 200)])
def test_fit_plane_too_few_points(n_points, ransac_n):
    points = np.random.default_rng(0).random((n_points, 3))
    with pytest.raises(
        ValueError, match=f"at least ransac_n={ransac_n} points, but got {n_points}"
    ):
        fit_plane(points, ransac_n=ransac_n)


def test_fit_plane_without_inliers():
    # Least-squares samples of 10 random points leave no point within 1e-9, so the
    # RANSAC plane is returned as it is instead of a refit of zero points.
    points = np.random.default_rng(0).uniform(-1, 1, (30, 3))
    fit = fit_plane(points, distance=1e-9, ransac_n=10, iterations=5)
    assert np.isfinite(fit.coefficients).all()
    assert np.linalg.norm(fit.normal) == pytest.approx(1.0)
    assert fit.n_inliers == 0


def test_fit_plane_degenerate_points():
    line = np.column_stack([np.linspace(0, 1, 20), np.zeros(20), np.zeros(20)])
    with pytest.raises(ValueError, match="collinear or repeated"):
        fit_plane(line, distance=0.1, iterations=30)
    with pytest.raises(ValueError, match="spacing 0.0 .*absolute distance"):
        fit_plane(np.ones((10, 3)))


def test_fit_plane_argument_errors():
    points = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError, match="ransac_n must be >= 3.*got 2"):
        fit_plane(points, ransac_n=2)
    with pytest.raises(TypeError, match="ransac_n must be an int"):
        fit_plane(points, ransac_n=3.0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        fit_plane(points, iterations=0)
    with pytest.raises(
        ValueError, match="distance must be 'auto' or a positive number"
    ):
        fit_plane(points, distance="fast")
    with pytest.raises(ValueError, match="distance must be a finite number > 0"):
        fit_plane(points, distance=-1.0)
    with pytest.raises(ValueError, match=r"points contains NaN"):
        fit_plane(np.full((5, 3), np.nan))


# ---------------------------------------------------------------------------------------
# remove_background


def test_remove_background_keeps_box():
    xyz, box, plane = tilted_scene()
    before = xyz.copy()
    cleaned, fit = remove_background(xyz, return_plane=True)
    np.testing.assert_array_equal(xyz, before)  # input untouched
    assert cleaned.dtype == np.float32
    np.testing.assert_array_equal(valid_of(cleaned), box)
    assert int(valid_of(cleaned).sum()) == 499
    np.testing.assert_array_equal(cleaned[box], xyz[box])
    np.testing.assert_allclose(fit.coefficients, plane, atol=2e-5)
    # Border strip: 60 x 80 minus the 40 x 60 inside, less the 5 holes in row 5.
    assert fit.n_points == 60 * 80 - 40 * 60 - 5
    assert fit.n_inliers == fit.n_points
    assert fit.spacing == pytest.approx(1.0e-3, rel=0.03)
    assert fit.distance == pytest.approx(3 * fit.spacing)


def test_remove_background_absolute_distance():
    xyz, box, _ = tilted_scene()
    cleaned = remove_background(xyz, distance=0.005, seed=3)
    np.testing.assert_array_equal(valid_of(cleaned), box)
    # A box lower than the threshold goes with the plane.
    low, _, _ = tilted_scene(height=0.004)
    assert not valid_of(remove_background(low, distance=0.005)).any()


def test_remove_background_scale_invariant():
    metres, box, _ = tilted_scene(scale=1.0)
    millimetres, _, _ = tilted_scene(scale=1000.0)
    clean_m, fit_m = remove_background(metres, return_plane=True)
    clean_mm, fit_mm = remove_background(millimetres, return_plane=True)
    np.testing.assert_array_equal(valid_of(clean_m), valid_of(clean_mm))
    np.testing.assert_array_equal(valid_of(clean_m), box)
    assert fit_mm.distance == pytest.approx(1000 * fit_m.distance, rel=1e-4)


@settings(max_examples=8, deadline=None)
@given(
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    slope_x=st.floats(-0.5, 0.5),
    slope_y=st.floats(-0.5, 0.5),
    seed=st.integers(0, 1000),
)
def test_remove_background_property(scale, slope_x, slope_y, seed):
    xyz, box, plane = tilted_scene(scale=scale, slope=(slope_x, slope_y), seed=seed)
    cleaned, fit = remove_background(xyz, seed=seed, return_plane=True)
    np.testing.assert_array_equal(valid_of(cleaned), box)
    np.testing.assert_allclose(fit.normal, plane[:3], atol=1e-4)


def test_remove_background_deterministic():
    xyz, _, _ = tilted_scene(seed=4)
    rng = np.random.default_rng(9)
    outliers = rng.random(xyz.shape[:2]) < 0.2
    xyz[outliers, 2] += rng.uniform(0.001, 0.02, int(outliers.sum())).astype(np.float32)
    first, fit_first = remove_background(xyz, seed=11, return_plane=True)
    second, fit_second = remove_background(xyz, seed=11, return_plane=True)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(fit_first.coefficients, fit_second.coefficients)
    from_generator = remove_background(xyz, seed=np.random.default_rng(5))
    again = remove_background(xyz, seed=np.random.default_rng(5))
    np.testing.assert_array_equal(from_generator, again)


def test_remove_background_zero_marker():
    with_nan, box, _ = tilted_scene()
    with_zero, _, _ = tilted_scene(missing=0.0)
    np.testing.assert_array_equal(
        remove_background(with_zero), remove_background(with_nan)
    )
    float64 = remove_background(with_nan.astype(np.float64))
    assert float64.dtype == np.float64
    np.testing.assert_array_equal(valid_of(float64), box)


def test_remove_background_preprocessed_input():
    # An object at rows and cols 15-24 of an all-zero 40 x 40 scan, so the border strip
    # of 10 pixels contains no point.
    org = np.zeros((40, 40, 3), np.float32)
    rows, cols = np.mgrid[15:25, 15:25]
    org[15:25, 15:25, 0] = cols * 1e-3
    org[15:25, 15:25, 1] = rows * 1e-3
    org[15:25, 15:25, 2] = 0.5
    with pytest.raises(
        ValueError,
        match="found 0 valid border points in the strip 10 pixels wide, fewer than "
        "ransac_n=3",
    ):
        remove_background(org, border=10)
    with pytest.raises(ValueError, match="found 0 valid border points"):
        remove_background(np.where(org == 0, np.nan, org))


@pytest.mark.parametrize(("n_valid", "ransac_n"), [(0, 3), (2, 3), (100, 200)])
def test_remove_background_too_few_border_points(n_valid, ransac_n):
    xyz, _, _ = tilted_scene()
    strip = np.zeros(xyz.shape[:2], bool)
    strip[:10] = strip[-10:] = True
    strip[:, :10] = strip[:, -10:] = True
    keep = np.flatnonzero(strip & valid_of(xyz))[:n_valid]
    reduced = np.full_like(xyz, np.nan)
    reduced.reshape(-1, 3)[keep] = xyz.reshape(-1, 3)[keep]
    reduced[BOX] = xyz[BOX]
    with pytest.raises(
        ValueError, match=f"found {n_valid} valid border points.*ransac_n={ransac_n}"
    ):
        remove_background(reduced, ransac_n=ransac_n)


def test_remove_background_argument_errors():
    xyz, _, _ = tilted_scene()
    with pytest.raises(ValueError, match="border must be >= 1.*border=0"):
        remove_background(xyz, border=0)
    with pytest.raises(ValueError, match=r"border=30 for an image of 60 x 80 pixels"):
        remove_background(xyz, border=30)
    with pytest.raises(ValueError, match=r"Pass a border from 1 to 29\."):
        remove_background(xyz, border=30)
    with pytest.raises(ValueError, match=r"2 x 2 pixels\. The image is too small for a "
                       r"border strip, so skip plane removal\."):
        remove_background(xyz[:2, :2], border=1)
    with pytest.raises(TypeError, match="border must be an int"):
        remove_background(xyz, border=2.5)
    with pytest.raises(ValueError, match="ransac_n must be >= 3"):
        remove_background(xyz, ransac_n=2)
    with pytest.raises(ValueError, match="distance must be 'auto'"):
        remove_background(xyz, distance="median")
    with pytest.raises(ValueError, match=r"xyz must have shape \(H, W, 3\)"):
        remove_background(xyz.reshape(-1, 3))
    bad = xyz.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite values"):
        remove_background(bad)


def test_remove_background_real_table_scene(pcl_data):
    xyz = read_organized(pcl_data / "table_scene_mug_stereo_textured.pcd")
    # The stereo cloud has no point in its top and bottom 10 rows, its first 138
    # columns and its last 10 columns.
    with pytest.raises(ValueError, match="found 0 valid border points"):
        remove_background(xyz)
    cleaned, fit = remove_background(xyz, border=30, return_plane=True)
    before = int(valid_of(xyz).sum())
    after = int(valid_of(cleaned).sum())
    assert before == 209280
    # The table fills most of the view, so most points go with it.
    assert 0.45 < 1 - after / before < 0.7
    assert fit.normal[1] > 0.7
    assert 0.002 < fit.distance < 0.01  # metres
    assert fit.n_inliers > 0.5 * fit.n_points


# ---------------------------------------------------------------------------------------
# largest_cluster


def flat_patches(mask, z=None):
    rows, cols = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    depth = np.ones(mask.shape) if z is None else z
    xyz = np.dstack([cols * 1e-3, rows * 1e-3, depth]).astype(np.float32)
    xyz[~mask] = np.nan
    return xyz


def test_largest_cluster_keeps_biggest():
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True  # 100 points
    mask[20:25, 20:25] = True  # 25 points
    xyz = flat_patches(mask)
    kept = largest_cluster(xyz)
    expected = np.zeros_like(mask)
    expected[2:12, 2:12] = True
    np.testing.assert_array_equal(valid_of(kept), expected)
    np.testing.assert_array_equal(kept[expected], xyz[expected])
    assert np.isnan(xyz[~mask]).all()


def test_largest_cluster_depth_jump_splits():
    mask = np.ones((10, 20), bool)
    z = np.ones((10, 20))
    z[:, 12:] = 1.5  # adjacent in the image, 0.5 apart in depth
    kept = largest_cluster(flat_patches(mask, z))
    expected = np.zeros_like(mask)
    expected[:, :12] = True
    np.testing.assert_array_equal(valid_of(kept), expected)


def test_largest_cluster_diagonal_link_and_tie():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component of 2
    mask[4, 4] = mask[4, 5] = True  # a second component of 2
    kept = largest_cluster(flat_patches(mask), radius=0.002)
    expected = np.zeros_like(mask)
    expected[0, 0] = expected[1, 1] = True
    np.testing.assert_array_equal(valid_of(kept), expected)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.2, 0.8))
def test_largest_cluster_matches_ndimage(seed, share):
    rng = np.random.default_rng(seed)
    mask = rng.random((25, 30)) < share
    if not mask.any():
        mask[0, 0] = True
    kept = largest_cluster(flat_patches(mask), radius=1e9)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    # ndimage numbers components in row-major order of their first pixel, so the first
    # maximum is the component our tie rule keeps.
    largest = labels == 1 + int(np.argmax(sizes))
    np.testing.assert_array_equal(valid_of(kept), largest)


def test_largest_cluster_errors():
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True
    mask[20:28, 20:30] = True  # 80 points
    xyz = flat_patches(mask)
    with pytest.raises(
        ValueError,
        match="largest connected component has 100 points, fewer than min_points=150",
    ):
        largest_cluster(xyz, min_points=150)
    with pytest.raises(ValueError, match="xyz has 0 valid points"):
        largest_cluster(np.full((4, 4, 3), np.nan))
    checkerboard = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)
    with pytest.raises(ValueError, match="radius='auto' needs adjacent valid pixels"):
        largest_cluster(flat_patches(checkerboard))
    with pytest.raises(ValueError, match="radius must be 'auto' or a positive number"):
        largest_cluster(xyz, radius="big")
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        largest_cluster(xyz, radius=-1.0)
    with pytest.raises(ValueError, match="min_points must be >= 1"):
        largest_cluster(xyz, min_points=0)


# ---------------------------------------------------------------------------------------
# Resizing


def test_nearest_indices_exact_centres():
    for n_in in range(1, 40):
        for n_out in range(1, 40):
            expected = [
                int((Fraction(2 * i + 1, 2) * n_in) // n_out) for i in range(n_out)
            ]
            assert _nearest_indices(n_in, n_out).tolist() == expected, (n_in, n_out)


def test_nearest_indices_agree_with_pillow():
    # Pillow's NEAREST uses the same pixel centres. It differs only where a centre
    # falls exactly on a pixel border, because it rounds down in floating point.
    for n_in in range(1, 40):
        for n_out in range(1, 30):
            column = np.arange(n_in, dtype=np.int32)[:, None].repeat(2, axis=1)
            pillow = np.asarray(
                Image.fromarray(column).resize((2, n_out), Image.Resampling.NEAREST)
            )[:, 0]
            ours = _nearest_indices(n_in, n_out)
            on_border = ((2 * np.arange(n_out) + 1) * n_in) % (2 * n_out) == 0
            np.testing.assert_array_equal(ours[~on_border], pillow[~on_border])


def test_resize_organized_copies_pixels():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(13, 17, 3))
    xyz[rng.random((13, 17)) < 0.3] = np.nan
    out = resize_organized(xyz, (5, 9))
    assert out.shape == (5, 9, 3)
    assert out.dtype == np.float64
    for i in range(5):
        for j in range(9):
            source = xyz[(2 * i + 1) * 13 // 10, (2 * j + 1) * 17 // 18]
            np.testing.assert_array_equal(out[i, j], source)
    square = resize_organized(xyz.astype(np.float32), 4)
    assert square.shape == (4, 4, 3)
    assert square.dtype == np.float32
    up = resize_organized(xyz, (26, 34))
    np.testing.assert_array_equal(up[::2, ::2], xyz)
    np.testing.assert_array_equal(up[1::2, 1::2], xyz)


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    out_height=st.integers(1, 30),
    out_width=st.integers(1, 30),
    seed=st.integers(0, 1000),
)
def test_resize_mask_stays_aligned(height, width, out_height, out_width, seed):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(height, width, 3)).astype(np.float32)
    xyz[rng.random((height, width)) < 0.4] = np.nan
    mask = valid_of(xyz)
    resized_mask = resize_mask(mask, (out_height, out_width))
    resized_xyz = resize_organized(xyz, (out_height, out_width))
    assert resized_mask.dtype == np.bool_
    np.testing.assert_array_equal(resized_mask, valid_of(resized_xyz))


def test_resize_rgb_bicubic():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    out = resize_rgb(rgb, (20, 15))
    assert out.shape == (20, 15, 3)
    assert out.dtype == np.uint8
    expected = np.asarray(
        Image.fromarray(rgb).resize((15, 20), Image.Resampling.BICUBIC)
    )
    np.testing.assert_array_equal(out, expected)
    constant = np.full((40, 30, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_rgb(constant, 9), np.full((9, 9, 3), 77))


def test_resize_mask_keeps_dtype():
    ids = np.array([[0, 254], [253, 0]], np.uint8)
    out = resize_mask(ids, 4)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.kron(ids, np.ones((2, 2), np.uint8)))


def test_resize_errors():
    xyz = np.zeros((4, 4, 3))
    with pytest.raises(
        ValueError, match=r"size must be >= 1 in each dimension, but got 0"
    ):
        resize_organized(xyz, 0)
    with pytest.raises(ValueError, match=r"size\[0\] \(height\) must be >= 1"):
        resize_organized(xyz, (0, 5))
    for bad in ("224", (1, 2, 3), True, 2.0):
        with pytest.raises(
            TypeError, match="size must be an int or a \\(height, width\\)"
        ):
            resize_mask(np.zeros((4, 4)), bad)
    with pytest.raises(ValueError, match=r"mask must have shape \(H, W\)"):
        resize_mask(np.zeros((4, 4, 1)), 2)
    with pytest.raises(ValueError, match=r"rgb must have shape \(H, W, 3\)"):
        resize_rgb(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(TypeError, match="rgb must have dtype uint8, but got float64"):
        resize_rgb(np.zeros((4, 4, 3)), 2)


# ---------------------------------------------------------------------------------------
# preprocess_sample


def scene_sample(xyz=True):
    cloud, box, _ = tilted_scene()
    gt = np.zeros(box.shape, bool)
    gt[22:26, 31:40] = True
    rgb = np.random.default_rng(2).integers(0, 256, (*box.shape, 3), dtype=np.uint8)
    sample = Sample(
        xyz=cloud if xyz else None,
        rgb=rgb,
        gt=gt,
        label=1,
        class_name="widget",
        split="test",
        defect="crack",
        name="test/crack/000",
        path=Path("widget/test/crack/xyz/000.tiff"),
    )
    return sample, box


def test_preprocess_sample_steps():
    sample, box = scene_sample()
    original = sample.xyz.copy()
    out = preprocess_sample(sample, size=(30, 40))
    assert isinstance(out, Sample)
    assert out.xyz.shape == (30, 40, 3)
    assert out.rgb.shape == (30, 40, 3)
    assert out.gt.shape == (30, 40)
    np.testing.assert_array_equal(valid_of(out.xyz), resize_mask(box, (30, 40)))
    np.testing.assert_array_equal(out.gt, resize_mask(sample.gt, (30, 40)))
    np.testing.assert_array_equal(out.rgb, resize_rgb(sample.rgb, (30, 40)))
    assert (out.name, out.label, out.path) == (sample.name, sample.label, sample.path)
    np.testing.assert_array_equal(sample.xyz, original)


def test_preprocess_sample_options():
    sample, box = scene_sample()
    same = preprocess_sample(sample, size=None, remove_plane=False)
    np.testing.assert_array_equal(same.xyz, sample.xyz)
    plane_only = preprocess_sample(sample, size=None, plane_kwargs={"distance": 0.005})
    np.testing.assert_array_equal(valid_of(plane_only.xyz), box)

    blob = dataclasses.replace(sample, xyz=sample.xyz.copy())
    blob.xyz[45:48, 10:13, 2] += 0.05  # a speck above the plane, apart from the box
    without = preprocess_sample(blob, size=None)
    assert int(valid_of(without.xyz).sum()) == 499 + 9
    clustered = preprocess_sample(blob, size=None, cluster=True)
    np.testing.assert_array_equal(valid_of(clustered.xyz), box)
    checked = preprocess_sample(
        blob, size=None, cluster=True, cluster_kwargs={"min_points": 400}
    )
    np.testing.assert_array_equal(valid_of(checked.xyz), box)

    rgb_only, _ = scene_sample(xyz=False)
    out = preprocess_sample(rgb_only, size=16, remove_plane=False)
    assert out.xyz is None
    assert out.rgb.shape == (16, 16, 3)


def test_preprocess_sample_errors():
    rgb_only, _ = scene_sample(xyz=False)
    with pytest.raises(
        ValueError, match="has no xyz, which plane removal and clustering"
    ):
        preprocess_sample(rgb_only)
    sample, _ = scene_sample()
    with pytest.raises(
        ValueError, match="plane_kwargs must not contain 'return_plane'"
    ):
        preprocess_sample(sample, plane_kwargs={"return_plane": True})
    with pytest.raises(TypeError, match="sample must be a zal3d_core.datasets.Sample"):
        preprocess_sample(sample.xyz)
    empty = dataclasses.replace(sample, xyz=np.full_like(sample.xyz, np.nan))
    with pytest.raises(ValueError, match="found 0 valid border points"):
        preprocess_sample(empty)


def test_preprocess_sample_names_scan_when_plane_fails(tmp_path):
    from zal3d_core.datasets import Sample

    xyz = np.full((40, 40, 3), np.nan, np.float32)
    xyz[15:25, 15:25] = 0.5
    sample = Sample(xyz=xyz, rgb=None, gt=None, label=0, class_name="c", split="test",
                    defect="good", name="test/good/000", path=tmp_path / "000.tiff")
    with pytest.raises(ValueError, match=r"000\.tiff: background plane removal failed: .*"
                       r"found 0 valid border points.*--plane-border N or --no-plane-removal when "
                       r"fitting; a saved model applies the settings it was fitted with"):
        preprocess_sample(sample)
