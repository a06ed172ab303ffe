"""Patch pooling against torch and a loop reference, and FPS against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zal3d_core import patches
from zal3d_core.patches import (
    farthest_point_sampling,
    fps_patches,
    patch_boxes,
    pool_patch_features,
    scatter_to_map,
)


def loop_pool(feature_map, valid, grid, kernel):
    """Box average then adaptive average, one output value at a time."""
    height, width, depth = feature_map.shape
    values = np.where(valid[:, :, None], feature_map, 0.0).astype(np.float64)
    pooled_h, pooled_w = height - kernel + 1, width - kernel + 1
    box = np.zeros((pooled_h, pooled_w, depth))
    for y in range(pooled_h):
        for x in range(pooled_w):
            box[y, x] = values[y : y + kernel, x : x + kernel].mean(axis=(0, 1))
    rows, columns = grid
    out = np.zeros((rows, columns, depth))
    for i in range(rows):
        y0 = math.floor(i * pooled_h / rows)
        y1 = math.ceil((i + 1) * pooled_h / rows)
        for j in range(columns):
            x0 = math.floor(j * pooled_w / columns)
            x1 = math.ceil((j + 1) * pooled_w / columns)
            out[i, j] = box[y0:y1, x0:x1].mean(axis=(0, 1))
    return out.reshape(rows * columns, depth)


def torch_pool(feature_map, valid, grid, kernel):
    torch = pytest.importorskip("torch")
    values = np.where(valid[:, :, None], feature_map, 0.0).astype(np.float64)
    x = torch.from_numpy(values).permute(2, 0, 1)[None]
    x = torch.nn.AvgPool2d(kernel, stride=1)(x)
    x = torch.nn.AdaptiveAvgPool2d(grid)(x)
    return x[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1).numpy()


def random_map(rng, shape, depth, invalid_share=0.2):
    feature_map = rng.standard_normal((*shape, depth))
    valid = rng.random(shape) >= invalid_share
    feature_map[~valid] = np.nan
    return feature_map, valid


def numpy_fps(points, n_samples, start=0):
    """Farthest point sampling with a full distance update per pick."""
    points = np.asarray(points, dtype=np.float64)
    nearest = np.full(len(points), np.inf)
    picked = np.zeros(len(points), bool)
    order = [start]
    for _ in range(n_samples - 1):
        picked[order[-1]] = True
        nearest = np.minimum(nearest, ((points - points[order[-1]]) ** 2).sum(axis=1))
        candidates = np.where(picked, -1.0, nearest)
        order.append(int(np.argmax(candidates)))  # argmax returns the first maximum
    return np.array(order[:n_samples], dtype=np.intp)


# -------------------------------------------------------------- pool_patch_features


@pytest.mark.parametrize(
    "shape, depth, grid, kernel",
    [
        ((224, 224), 5, (28, 28), 3),
        ((37, 23), 4, (5, 7), 3),
        ((30, 41), 2, (30, 41), 1),
        ((19, 19), 3, (3, 4), 5),
        ((12, 40), 1, (1, 1), 3),
    ],
)
def test_pool_matches_torch(shape, depth, grid, kernel):
    rng = np.random.default_rng(sum(shape) + depth)
    feature_map, valid = random_map(rng, shape, depth)
    features, _ = pool_patch_features(feature_map, valid, grid, kernel)
    expected = torch_pool(feature_map, valid, grid, kernel)
    assert features.dtype == np.float32
    assert features.shape == (grid[0] * grid[1], depth)
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape, grid, kernel",
    [((20, 17), (6, 5), 3), ((9, 14), (7, 3), 2), ((11, 11), (9, 9), 3)],
)
def test_pool_matches_loop_reference(shape, grid, kernel):
    rng = np.random.default_rng(shape[0] * shape[1])
    feature_map, valid = random_map(rng, shape, 3)
    features, _ = pool_patch_features(feature_map, valid, grid, kernel)
    expected = loop_pool(feature_map, valid, grid, kernel)
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_pool_real_organized_scan_matches_torch(pcl_data):
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(
        str(pcl_data / "pairwise" / "capture0001.pcd"),
        remove_nan_points=False,
        remove_infinite_points=False,
    )
    xyz = np.asarray(cloud.points).reshape(480, 640, 3)
    valid = ~np.isnan(xyz).any(axis=2)
    assert (~valid).sum() == 57553
    features, patch_valid = pool_patch_features(xyz, valid)
    expected = torch_pool(xyz, valid, (28, 28), 3)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    boxes = patch_boxes(valid.shape, 28)
    expected_valid = [valid[y0:y1, x0:x1].any() for y0, y1, x0, x1 in boxes]
    np.testing.assert_array_equal(patch_valid, expected_valid)


def test_pool_nan_at_invalid_pixels_does_not_leak():
    rng = np.random.default_rng(1)
    feature_map, valid = random_map(rng, (30, 30), 4, invalid_share=0.5)
    zeroed = np.where(valid[:, :, None], feature_map, 0.0)
    features, _ = pool_patch_features(feature_map, valid, 7)
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(features, pool_patch_features(zeroed, valid, 7)[0])
    feature_map[~valid] = np.inf
    np.testing.assert_array_equal(
        features, pool_patch_features(feature_map, valid, 7)[0]
    )


def test_pool_does_not_modify_input():
    rng = np.random.default_rng(2)
    feature_map, valid = random_map(rng, (16, 16), 2)
    before = feature_map.copy()
    pool_patch_features(feature_map, valid, 4)
    np.testing.assert_array_equal(feature_map, before)


def test_pool_patch_valid_matches_pooled_indicator():
    rng = np.random.default_rng(3)
    valid = np.zeros((40, 40), bool)
    valid[5:9, 30:33] = True
    valid[rng.integers(0, 40, 6), rng.integers(0, 40, 6)] = True
    _, patch_valid = pool_patch_features(np.ones((40, 40, 1)), valid, (9, 6))
    indicator, _ = pool_patch_features(valid[:, :, None].astype(float), valid, (9, 6))
    np.testing.assert_array_equal(patch_valid, indicator[:, 0] > 0)
    assert 0 < patch_valid.sum() < patch_valid.size


def test_pool_float32_input_matches_float64():
    rng = np.random.default_rng(4)
    feature_map, valid = random_map(rng, (50, 60), 6)
    result64, _ = pool_patch_features(feature_map, valid, (8, 9))
    result32, _ = pool_patch_features(feature_map.astype(np.float32), valid, (8, 9))
    np.testing.assert_allclose(result32, result64, rtol=1e-5, atol=1e-6)


def test_pool_channel_blocks_match(monkeypatch):
    rng = np.random.default_rng(5)
    feature_map, valid = random_map(rng, (24, 24), 11)
    expected, _ = pool_patch_features(feature_map, valid, 6)
    monkeypatch.setattr(patches, "_BLOCK_ELEMENTS", 24 * 24 * 3)
    result, _ = pool_patch_features(feature_map, valid, 6)
    np.testing.assert_array_equal(result, expected)


def test_pool_int_grid_equals_pair():
    rng = np.random.default_rng(6)
    feature_map, valid = random_map(rng, (20, 20), 2)
    square, _ = pool_patch_features(feature_map, valid, 6)
    pair, _ = pool_patch_features(feature_map, valid, (6, 6))
    np.testing.assert_array_equal(square, pair)


def test_pool_constant_valid_map_keeps_value():
    features, patch_valid = pool_patch_features(
        np.full((224, 224, 33), 2.5, np.float32), np.ones((224, 224), bool)
    )
    assert features.shape == (784, 33)
    np.testing.assert_allclose(features, 2.5, rtol=1e-6)
    assert patch_valid.all()


def test_pool_rejects_nan_at_valid_pixel():
    feature_map = np.zeros((10, 10, 2))
    valid = np.ones((10, 10), bool)
    feature_map[3, 4, 1] = np.nan
    feature_map[6, 6, 0] = np.inf
    with pytest.raises(
        ValueError, match="NaN or infinite values in 2 of the 100 valid pixels"
    ):
        pool_patch_features(feature_map, valid, 4)


def test_pool_rejects_grid_larger_than_pooled_map():
    with pytest.raises(
        ValueError, match=r"grid \(9, 8\) is larger than the \(8, 8\) map"
    ):
        pool_patch_features(np.zeros((10, 10, 1)), np.ones((10, 10), bool), (9, 8))


def test_pool_rejects_kernel_larger_than_image():
    with pytest.raises(
        ValueError, match=r"kernel=11 is larger than the image \(10, 12\)"
    ):
        pool_patch_features(
            np.zeros((10, 12, 1)), np.ones((10, 12), bool), 1, kernel=11
        )
    with pytest.raises(ValueError, match="kernel must be >= 1"):
        pool_patch_features(np.zeros((10, 12, 1)), np.ones((10, 12), bool), 1, kernel=0)


@pytest.mark.parametrize("grid", [(3, 4, 5), "28", (2.5, 3), None])
def test_pool_rejects_bad_grid_type(grid):
    with pytest.raises(TypeError, match="grid"):
        pool_patch_features(np.zeros((10, 10, 1)), np.ones((10, 10), bool), grid)


def test_pool_rejects_zero_grid():
    with pytest.raises(ValueError, match=r"grid\[1\] must be >= 1, but got 0"):
        pool_patch_features(np.zeros((10, 10, 1)), np.ones((10, 10), bool), (2, 0))


def test_pool_rejects_bad_valid():
    with pytest.raises(
        TypeError, match="valid must be a boolean ndarray, but got int64"
    ):
        pool_patch_features(np.zeros((10, 10, 1)), np.ones((10, 10), np.int64), 2)
    with pytest.raises(
        ValueError, match=r"valid must have the shape \(10, 10\).*\(10, 9\)"
    ):
        pool_patch_features(np.zeros((10, 10, 1)), np.ones((10, 9), bool), 2)


def test_pool_rejects_2d_feature_map():
    with pytest.raises(
        ValueError, match=r"feature_map must have shape \(H, W, D\).*scatter_to_map"
    ):
        pool_patch_features(np.zeros((100, 33)), np.ones((100, 33), bool), 2)


# ---------------------------------------------------------------------- patch_boxes


def test_patch_boxes_default_grid():
    boxes = patch_boxes((224, 224), (28, 28))
    assert boxes.shape == (784, 4)
    assert boxes.dtype == np.intp
    np.testing.assert_array_equal(boxes[0], [0, 10, 0, 10])
    np.testing.assert_array_equal(boxes[1], [0, 10, 7, 18])
    np.testing.assert_array_equal(boxes[-1], [214, 224, 214, 224])


def test_patch_boxes_match_pooling_weights():
    # One channel per pixel: a patch's output is nonzero exactly on its receptive field.
    shape, grid, kernel = (9, 8), (4, 3), 3
    n_pixels = shape[0] * shape[1]
    one_hot = np.eye(n_pixels).reshape(*shape, n_pixels)
    features, _ = pool_patch_features(one_hot, np.ones(shape, bool), grid, kernel)
    for row, (y0, y1, x0, x1) in zip(features, patch_boxes(shape, grid, kernel)):
        inside = np.zeros(shape, bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(row.reshape(shape) > 0, inside)
        assert row.sum() == pytest.approx(1.0, abs=1e-6)


def test_patch_boxes_rejects_bad_shape():
    with pytest.raises(TypeError, match=r"image_shape must be a pair.*xyz.shape\[:2\]"):
        patch_boxes((224, 224, 3), 28)
    with pytest.raises(ValueError, match="grid"):
        patch_boxes((20, 20), 19)


# -------------------------------------------------------------------- scatter_to_map


def test_scatter_round_trip_organized_cloud():
    rng = np.random.default_rng(7)
    xyz = rng.random((6, 5, 3))
    xyz[rng.random((6, 5)) < 0.3] = np.nan
    flat_index = np.flatnonzero(~np.isnan(xyz).any(axis=2))
    values = xyz.reshape(-1, 3)[flat_index]
    restored = scatter_to_map(values, flat_index, (6, 5), fill=np.nan)
    np.testing.assert_array_equal(restored, xyz)


def test_scatter_1d_values_and_dtype():
    out = scatter_to_map(np.array([1.0, 2.0], np.float32), [5, 0], (2, 3), fill=-1.0)
    assert out.shape == (2, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[2.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])


def test_scatter_then_pool():
    rng = np.random.default_rng(8)
    valid = rng.random((12, 12)) < 0.7
    flat_index = np.flatnonzero(valid)
    values = rng.random((flat_index.size, 4))
    feature_map = scatter_to_map(values, flat_index, valid.shape)
    features, _ = pool_patch_features(feature_map, valid, 3)
    np.testing.assert_allclose(
        features, loop_pool(feature_map, valid, (3, 3), 3), atol=1e-6
    )


def test_scatter_empty():
    out = scatter_to_map(np.zeros((0, 2)), np.zeros(0, np.int64), (2, 2), fill=np.nan)
    assert out.shape == (2, 2, 2)
    assert np.isnan(out).all()


def test_scatter_rejects_bad_index():
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\).*from 0 to 6"):
        scatter_to_map([1.0, 2.0], [0, 6], (2, 3))
    with pytest.raises(ValueError, match=r"from -1 to 1"):
        scatter_to_map([1.0, 2.0], [-1, 1], (2, 3))
    with pytest.raises(ValueError, match="repeats 1 pixels"):
        scatter_to_map([1.0, 2.0, 3.0], [1, 1, 2], (2, 3))
    with pytest.raises(ValueError, match=r"flat_index must have shape \(3,\)"):
        scatter_to_map([1.0, 2.0, 3.0], [1, 2], (2, 3))
    with pytest.raises(
        TypeError, match="flat_index must be an integer array.*flatnonzero"
    ):
        scatter_to_map([1.0, 2.0], np.array([True, False]), (1, 2))
    with pytest.raises(TypeError, match="flat_index must be an integer array"):
        scatter_to_map([1.0, 2.0], [0.0, 1.0], (1, 2))


def test_scatter_rejects_bad_values_shape_and_fill():
    with pytest.raises(ValueError, match=r"values must have shape \(N, D\) or \(N,\)"):
        scatter_to_map(np.zeros((2, 2, 2)), [0, 1], (1, 2))
    with pytest.raises(TypeError, match="image_shape must be a pair"):
        scatter_to_map([1.0], [0], 4)
    with pytest.raises(TypeError, match="fill must be a real number"):
        scatter_to_map([1.0], [0], (1, 2), fill="nan")


# ---------------------------------------------------------- farthest_point_sampling


@pytest.mark.parametrize(
    "n, dim, start", [(500, 3, 0), (300, 2, 17), (64, 5, 63), (1, 3, 0)]
)
def test_fps_matches_numpy(n, dim, start):
    rng = np.random.default_rng(n + dim)
    points = rng.standard_normal((n, dim))
    n_samples = min(n, 40)
    result = farthest_point_sampling(points, n_samples, start=start)
    assert result.dtype == np.intp
    np.testing.assert_array_equal(result, numpy_fps(points, n_samples, start))


def test_fps_all_points_is_permutation():
    points = np.random.default_rng(9).random((50, 3))
    result = farthest_point_sampling(points, 50, start=3)
    assert sorted(result.tolist()) == list(range(50))
    np.testing.assert_array_equal(result, numpy_fps(points, 50, 3))


def test_fps_grid_ties_go_to_lowest_index():
    points = np.array([[i // 3, i % 3, 0.0] for i in range(9)])
    result = farthest_point_sampling(points, 9)
    assert result.tolist() == [0, 8, 2, 6, 4, 1, 3, 5, 7]


def test_fps_duplicate_points_stay_distinct():
    points = [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert farthest_point_sampling(points, 3).tolist() == [0, 2, 1]


def test_fps_far_from_origin():
    rng = np.random.default_rng(10)
    points = rng.random((200, 3)) * 1e-3
    near = farthest_point_sampling(points, 30)
    far = farthest_point_sampling(points.astype(np.float64) + 1e4, 30)
    np.testing.assert_array_equal(near, far)


def test_fps_zero_samples():
    assert farthest_point_sampling(np.zeros((4, 3)), 0).shape == (0,)


def test_fps_real_scan_spreads_picks(pcl_test):
    import open3d as o3d

    points = np.asarray(o3d.io.read_point_cloud(str(pcl_test / "bunny.pcd")).points)
    picks = farthest_point_sampling(points, 64)
    np.testing.assert_array_equal(picks, numpy_fps(points, 64))
    # Each pick is at least as far from the earlier picks as every later pick is.
    gaps = [
        np.linalg.norm(points[picks[:s]] - points[picks[s]], axis=1).min()
        for s in range(1, 64)
    ]
    assert np.all(np.diff(gaps) <= 1e-12)
    pairwise = np.linalg.norm(points[picks][:, None] - points[picks][None], axis=2)
    assert pairwise[~np.eye(64, dtype=bool)].min() >= gaps[-1] - 1e-12


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    data=st.data(),
)
def test_fps_matches_numpy_with_ties(n, data):
    coordinates = data.draw(st.lists(st.integers(0, 3), min_size=2 * n, max_size=2 * n))
    points = np.array(coordinates, dtype=np.float64).reshape(n, 2)
    n_samples = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, n - 1))
    result = farthest_point_sampling(points, n_samples, start)
    np.testing.assert_array_equal(result, numpy_fps(points, n_samples, start))
    assert len(set(result.tolist())) == n_samples


def test_fps_rejects_bad_input():
    points = np.zeros((5, 3))
    with pytest.raises(
        ValueError, match=r"n_samples=6 is larger than the number of points \(5\)"
    ):
        farthest_point_sampling(points, 6)
    with pytest.raises(ValueError, match=r"start must be in \[0, 5\), but got 5"):
        farthest_point_sampling(points, 2, start=5)
    with pytest.raises(ValueError, match="n_samples must be >= 0"):
        farthest_point_sampling(points, -1)
    with pytest.raises(TypeError, match="n_samples must be an int"):
        farthest_point_sampling(points, 2.5)
    points[2, 1] = np.nan
    with pytest.raises(ValueError, match="points contains NaN in 1 of 5 rows"):
        farthest_point_sampling(points, 2)
    with pytest.raises(ValueError, match=r"points must have shape \(N, D\)"):
        farthest_point_sampling(np.zeros(5), 2)


# ---------------------------------------------------------------------- fps_patches


def test_fps_patches_match_brute_force():
    rng = np.random.default_rng(11)
    points = rng.random((400, 3))
    centers, neighbors = fps_patches(points, 16, 24, start=5)
    np.testing.assert_array_equal(centers, numpy_fps(points, 16, 5))
    assert neighbors.shape == (16, 24)
    assert neighbors.dtype == np.intp
    distances = np.linalg.norm(points[centers][:, None] - points[None], axis=2)
    index = np.broadcast_to(np.arange(400), distances.shape)
    expected = np.lexsort((index, distances), axis=1)[:, :24]
    np.testing.assert_array_equal(neighbors, expected)
    np.testing.assert_array_equal(neighbors[:, 0], centers)


def test_fps_patches_real_scan(pcl_test):
    import open3d as o3d
    from scipy.spatial import cKDTree

    points = np.asarray(o3d.io.read_point_cloud(str(pcl_test / "bun0.pcd")).points)
    centers, neighbors = fps_patches(points, 32, 16)
    ref_distances, _ = cKDTree(points).query(points[centers], 16)
    distances = np.linalg.norm(points[neighbors] - points[centers][:, None], axis=2)
    np.testing.assert_allclose(distances, ref_distances, rtol=0, atol=1e-12)


def test_fps_patches_zero_patches():
    centers, neighbors = fps_patches(np.zeros((3, 3)), 0, 2)
    assert centers.shape == (0,)
    assert neighbors.shape == (0, 2)


def test_fps_patches_rejects_bad_sizes():
    points = np.random.default_rng(12).random((10, 3))
    with pytest.raises(
        ValueError, match=r"patch_size=11 is larger than the number of points \(10\)"
    ):
        fps_patches(points, 2, 11)
    with pytest.raises(
        ValueError, match=r"n_patches=11 is larger than the number of points \(10\)"
    ):
        fps_patches(points, 11, 2)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        fps_patches(points, 2, 0)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        fps_patches(points[:, :2], 2, 2)
