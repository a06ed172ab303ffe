"""Bad input for KDTree, normals, FPFH, patches, resizing and synthesis.

Wrong types and shapes must raise TypeError or ValueError with a message that names the
argument. Degenerate but valid clouds (tiny, duplicated, collinear, planar, far from
the origin or at extreme scales) must give finite results as documented, never a crash
inside a kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from zal3d_core import (
    CameraModel,
    KDTree,
    compute_fpfh,
    compute_fpfh_organized,
    estimate_normals,
    estimate_normals_organized,
    farthest_point_sampling,
    fit_plane,
    median_point_spacing,
    pool_patch_features,
    remove_background,
    resize_mask,
    resize_organized,
    resize_rgb,
    scatter_to_map,
    select_anchors,
    synthesize_organized,
)
from zal3d_core._kernels import _synthesis, _window


def plane_cloud(n=200, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1.0, 1.0, (n, 3))
    points[:, 2] = 0.02 * rng.standard_normal(n)
    return points


def organized_cloud(height=24, width=24, seed=0) -> np.ndarray:
    """A gently curved pinhole scan 0.5 units from the camera, with 5% holes."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    depth = (
        0.5 + 0.01 * np.sin(cols / 4.0) + 1e-4 * rng.standard_normal((height, width))
    )
    xyz = np.stack(
        [(cols - width / 2) * depth / 500, (rows - height / 2) * depth / 500, depth], -1
    )
    xyz[rng.random((height, width)) < 0.05] = np.nan
    return xyz


def block_sums(features: np.ndarray) -> np.ndarray:
    return features.reshape(-1, 3, 11).sum(axis=2)


# ---------------------------------------------------------------------------------------
# Types, shapes and values of the point arrays


@pytest.mark.parametrize(
    "points, error, message",
    [
        (
            np.zeros((5, 3), complex),
            TypeError,
            "points must be a numeric array, but got dtype complex128",
        ),
        (
            np.zeros((5, 3), object),
            TypeError,
            "points must be a numeric array, but got dtype object",
        ),
        ("points.ply", TypeError, "points must be a numeric array, but got str"),
        (None, TypeError, "points must be a numeric array, but got NoneType"),
        ([[0.0, 1.0, 2.0], [1.0, 2.0]], TypeError, "points must be a numeric array"),
        (np.float64(3.0), ValueError, r"points must have shape \(N, 3\), but got \(\)"),
        (np.zeros(3), ValueError, r"points must have shape \(N, 3\), but got \(3,\)"),
        (
            np.zeros((5, 4)),
            ValueError,
            r"got \(5, 4\). Pass only the x, y and z columns",
        ),
        (
            np.zeros((4, 4, 3)),
            ValueError,
            r"For an organized \(H, W, 3\) cloud, pass xyz.reshape",
        ),
        (np.zeros((0, 3)), ValueError, r"points is empty \(shape \(0, 3\)\)"),
        (np.full((4, 3), np.nan), ValueError, "all 4 rows contain NaN"),
        (
            np.array([[0.0, 0, 0], [np.inf, 0, 0]]),
            ValueError,
            "points contains infinite values in 1 rows",
        ),
        (
            np.array([[0.0, 0, 0], [1e200, 0, 0]]),
            ValueError,
            r"values up to 1e\+200 in magnitude, but at most 1e\+100",
        ),
        (np.array([[0.0, 0, 0], [-1.7e308, 0, 0]]), ValueError, "at most 1e"),
    ],
)
def test_bad_points_for_normals_and_fpfh(points, error, message):
    with pytest.raises(error, match=message):
        estimate_normals(points, 0.5, 10)
    with pytest.raises(error, match=message):
        compute_fpfh(points, np.zeros((5, 3)), 0.5, 10)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"radius": 0.0},
            ValueError,
            "radius must be a finite number > 0, but got 0.0",
        ),
        (
            {"radius": -1.0},
            ValueError,
            "radius must be a finite number > 0, but got -1.0",
        ),
        (
            {"radius": float("nan")},
            ValueError,
            "radius must be a finite number > 0, but got nan",
        ),
        (
            {"radius": float("inf")},
            ValueError,
            "radius must be a finite number > 0, but got inf",
        ),
        (
            {"radius": True},
            TypeError,
            "radius must be a real number, but got bool True",
        ),
        (
            {"radius": "0.5"},
            TypeError,
            "radius must be a real number, but got str '0.5'",
        ),
        ({"max_nn": 0}, ValueError, "max_nn must be >= 1, but got 0"),
        ({"max_nn": -5}, ValueError, "max_nn must be >= 1, but got -5"),
        ({"max_nn": 2.5}, TypeError, "max_nn must be an int, but got float 2.5"),
        ({"max_nn": 1e300}, TypeError, "max_nn must be an int, but got float 1e"),
        (
            {"max_nn": 2**70},
            ValueError,
            "max_nn must be <= 9223372036854775807, but got 1180591620717411303424",
        ),
        (
            {"max_nn": 10**40},
            ValueError,
            r"max_nn must be <= 9223372036854775807, but got 1\.000e\+40",
        ),
        ({"max_nn": None}, TypeError, "max_nn must be an int, but got NoneType None"),
    ],
)
def test_bad_radius_and_max_nn(kwargs, error, message):
    points = plane_cloud(30)
    arguments = {"radius": 0.5, "max_nn": 10, **kwargs}
    with pytest.raises(error, match=message):
        estimate_normals(points, arguments["radius"], arguments["max_nn"])
    normals = estimate_normals(points, 0.5, 10)
    with pytest.raises(error, match=message):
        compute_fpfh(points, normals, arguments["radius"], arguments["max_nn"])


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(np.float32),
        lambda a: a.astype(np.float16),
        lambda a: a.astype(np.int64),
        lambda a: a.astype(np.uint8),
        lambda a: a.tolist(),
        lambda a: np.asfortranarray(a),
        lambda a: np.repeat(a, 2, axis=0)[::2],
        lambda a: np.lib.stride_tricks.as_strided(
            a, a.shape, a.strides, writeable=False
        ),
    ],
    ids=[
        "float32",
        "float16",
        "int64",
        "uint8",
        "list",
        "fortran",
        "strided",
        "read-only",
    ],
)
def test_input_layouts_give_same_features(convert):
    # Integer coordinates below 256 are exact in every dtype here, so each layout must
    # give exactly the result of the float64 C-contiguous array.
    rng = np.random.default_rng(3)
    points = np.column_stack(
        [rng.integers(0, 200, 80), rng.integers(0, 200, 80), rng.integers(0, 4, 80)]
    ).astype(np.float64)
    expected = estimate_normals(points, 40.0, 12)
    normals = estimate_normals(convert(points), 40.0, 12)
    np.testing.assert_array_equal(normals, expected)
    np.testing.assert_array_equal(
        compute_fpfh(convert(points), normals, 80.0, 30),
        compute_fpfh(points, expected, 80.0, 30),
    )


def test_normals_of_other_shape_rejected():
    points = plane_cloud(20)
    with pytest.raises(
        ValueError,
        match=r"normals must have one row per point, shape \(20, 3\), but got \(19, 3\)",
    ):
        compute_fpfh(points, np.tile([0.0, 0.0, 1.0], (19, 1)), 0.5, 10)
    with pytest.raises(
        ValueError,
        match="normals must be unit vectors at every valid point, but 20 of 20",
    ):
        compute_fpfh(points, np.zeros((20, 3)), 0.5, 10)
    with pytest.raises(ValueError, match="viewpoint must be finite"):
        estimate_normals(points, 0.5, 10, viewpoint=[np.nan, 0.0, 0.0])
    with pytest.raises(
        ValueError, match=r"viewpoint must have shape \(3,\), but got \(2,\)"
    ):
        estimate_normals(points, 0.5, 10, viewpoint=[0.0, 0.0])


# ---------------------------------------------------------------------------------------
# Degenerate clouds get documented finite results


@pytest.mark.parametrize(
    "name, points",
    [
        ("one point", np.array([[0.1, 0.2, 0.3]])),
        ("two points", np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])),
        ("three points", np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])),
        ("duplicates", np.ones((40, 3))),
        ("collinear", np.outer(np.linspace(0.0, 1.0, 40), [1.0, 2.0, 3.0])),
        ("planar", np.column_stack([plane_cloud(60)[:, :2], np.zeros(60)])),
        ("far from origin", plane_cloud(60) + [5e5, 5e5, 0.0]),
        (
            "with NaN rows",
            np.where(np.arange(60)[:, None] % 7 == 0, np.nan, plane_cloud(60)),
        ),
    ],
)
def test_degenerate_clouds_give_finite_features(name, points):
    valid = ~np.isnan(points).any(axis=1)
    normals = estimate_normals(points, 0.6, 30)
    assert np.isnan(normals[~valid]).all()
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=1), 1.0, atol=1e-6)
    features = compute_fpfh(points, normals, 1.2, 60)
    assert np.isfinite(features).all()
    sums = block_sums(features[valid])
    # 200 per block with neighbours, 100 when all neighbours coincide, 0 when alone.
    nearest = np.abs(sums[..., None] - np.array([0.0, 100.0, 200.0])).min(axis=-1)
    assert nearest.max() < 1e-3
    assert (features[~valid] == 0).all()


def test_isolated_point_gets_zero_fpfh():
    grid = np.stack(np.meshgrid(np.arange(5), np.arange(5)), -1).reshape(-1, 2) * 0.05
    points = np.vstack([np.column_stack([grid, np.zeros(25)]), [[5.0, 5.0, 5.0]]])
    normals = estimate_normals(points, 0.1, 30)
    features = compute_fpfh(points, normals, 0.25, 100)
    np.testing.assert_array_equal(normals[25], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(features[25], np.zeros(33))
    np.testing.assert_allclose(features[:25].sum(axis=1), 600.0, atol=1e-3)


def test_subnormal_distances_do_not_corrupt_memory():
    # Squared distances of ~1e-320 once made the bucket sort index out of bounds.
    points = plane_cloud(400) * 1e-160
    normals = estimate_normals(points, 0.4e-160, 60)
    features = compute_fpfh(points, normals, 0.8e-160, 100)
    np.testing.assert_array_equal(normals, np.tile([0.0, 0.0, 1.0], (400, 1)))
    assert np.isfinite(features).all()


def test_near_duplicate_cluster_counts_as_one_place():
    rng = np.random.default_rng(1)
    cluster = 0.5 + 1e-160 * rng.random((40, 3))
    points = np.vstack([cluster, plane_cloud(100)])
    normals = estimate_normals(points, 0.05, 60)
    np.testing.assert_array_equal(normals[:40], np.tile([0.0, 0.0, 1.0], (40, 1)))
    features = compute_fpfh(points, normals, 0.1, 100)
    assert np.isfinite(features).all()


def test_sort_pairs_with_subnormal_keys():
    rng = np.random.default_rng(2)
    size = 50
    d2 = rng.integers(0, 5, size) * 5e-324
    idx = rng.permutation(size).astype(np.intp)
    order = np.lexsort((idx, d2))
    expected_d2, expected_idx = d2[order], idx[order]
    _window.sort_pairs(
        d2,
        idx,
        size,
        np.empty(size),
        np.empty(size, np.intp),
        np.empty(size + 1, np.intp),
    )
    np.testing.assert_array_equal(d2, expected_d2)
    np.testing.assert_array_equal(idx, expected_idx)


def test_scale_invariance_over_many_decades():
    points = plane_cloud(300)
    reference_normals = estimate_normals(points, 0.3, 30)
    reference = compute_fpfh(points, reference_normals, 0.6, 100)
    for scale in (2.0**-400, 2.0**-40, 2.0**40, 2.0**300):
        normals = estimate_normals(points * scale, 0.3 * scale, 30)
        np.testing.assert_array_equal(normals, reference_normals)
        np.testing.assert_array_equal(
            compute_fpfh(points * scale, normals, 0.6 * scale, 100), reference
        )


def test_spacing_below_float64_resolution():
    with pytest.raises(
        ValueError, match="closer together than float64 squared distances resolve"
    ):
        median_point_spacing(plane_cloud(50) * 1e-310)
    with pytest.raises(ValueError, match="at least 2 distinct valid"):
        median_point_spacing(np.ones((10, 3)))


# ---------------------------------------------------------------------------------------
# KD-tree


def test_kdtree_k_larger_than_bank():
    bank = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    tree = KDTree(bank)
    with pytest.raises(
        ValueError, match=r"k=8 is larger than the number of points in the tree \(5\)"
    ):
        tree.query([[0.1, 0.1]], k=8)
    distances, indices = tree.query_radius([[0.1, 0.1]], 10.0, max_nn=8)
    np.testing.assert_allclose(
        distances[0, :5], [0.14142136, 0.90553851, 0.90553851, 1.27279221, 2.68700577]
    )
    assert set(indices[0, 1:3].tolist()) == {1, 2}
    assert indices[0, [0, 3, 4]].tolist() == [0, 3, 4]
    assert np.isinf(distances[0, 5:]).all()
    assert (indices[0, 5:] == 5).all()
    with pytest.raises(IndexError):
        bank[indices[0]]


@pytest.mark.parametrize(
    "leaf_size, error, message",
    [
        (0, ValueError, "leaf_size must be >= 1, but got 0"),
        (1e300, TypeError, "leaf_size must be an int, but got float 1e"),
        (
            2**64,
            ValueError,
            r"leaf_size must be <= 9223372036854775807, but got 18446744073709551616",
        ),
        (True, TypeError, "leaf_size must be an int, but got bool True"),
    ],
)
def test_kdtree_leaf_size(leaf_size, error, message):
    with pytest.raises(error, match=message):
        KDTree(plane_cloud(10), leaf_size=leaf_size)


def test_kdtree_queries():
    tree = KDTree(plane_cloud(20))
    with pytest.raises(ValueError, match=r"queries must have shape \(M, 3\) or \(3,\)"):
        tree.query(np.zeros((2, 2)))
    with pytest.raises(
        ValueError, match="queries contains NaN or infinite values in 1 rows"
    ):
        tree.query([[np.nan, 0.0, 0.0]])
    with pytest.raises(
        ValueError, match="distance_upper_bound must be > 0, but got -1"
    ):
        tree.query(np.zeros(3), k=1, distance_upper_bound=-1)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        tree.query_radius(np.zeros(3), 0.0)
    assert tree.query(np.zeros((0, 3)), k=2)[1].shape == (0, 2)


@pytest.mark.parametrize("bound", ["1.0", True, None])
def test_kdtree_bound_type(bound):
    tree = KDTree(plane_cloud(20))
    with pytest.raises(TypeError, match="distance_upper_bound must be a real number"):
        tree.query(np.zeros(3), k=2, distance_upper_bound=bound)


def test_numpy_integers_as_n_jobs():
    points = plane_cloud(40)
    expected = estimate_normals(points, 0.5, 10, n_jobs=1)
    np.testing.assert_array_equal(
        estimate_normals(points, 0.5, 10, n_jobs=np.int64(1)), expected
    )
    with pytest.raises(TypeError, match="n_jobs must be an int or None, but got 1.5"):
        estimate_normals(points, 0.5, 10, n_jobs=1.5)
    with pytest.raises(
        ValueError, match="n_jobs must be a nonzero int or None, but got 0"
    ):
        estimate_normals(points, 0.5, 10, n_jobs=np.int32(0))


# ---------------------------------------------------------------------------------------
# Organized clouds


def test_huge_window_is_clamped_to_the_image():
    xyz = organized_cloud()
    expected = estimate_normals_organized(xyz, 0.01, 30, window=24)
    np.testing.assert_array_equal(
        estimate_normals_organized(xyz, 0.01, 30, window=2**62), expected
    )
    expected_features = compute_fpfh_organized(xyz, expected, 0.02, 100, window=24)
    np.testing.assert_array_equal(
        compute_fpfh_organized(xyz, expected, 0.02, 100, window=2**62),
        expected_features,
    )
    with pytest.raises(ValueError, match=r"window must be <= 9223372036854775807"):
        estimate_normals_organized(xyz, 0.01, 30, window=2**64)
    with pytest.raises(ValueError, match="window must be >= 1, but got 0"):
        estimate_normals_organized(xyz, 0.01, 30, window=0)


@pytest.mark.parametrize(
    "xyz, error, message",
    [
        (
            np.zeros((6, 6)),
            ValueError,
            r"xyz must have shape \(H, W, 3\), but got \(6, 6\)",
        ),
        (
            np.zeros((6, 6, 4)),
            ValueError,
            r"xyz must have shape \(H, W, 3\), but got \(6, 6, 4\)",
        ),
        (np.zeros((36, 3)), ValueError, r"looks like an unorganized \(N, 3\) cloud"),
        (np.zeros((0, 6, 3)), ValueError, r"xyz must have H >= 1 and W >= 1"),
        (np.full((6, 6, 3), np.nan), ValueError, "all 36 pixels contain NaN"),
        (np.full((6, 6, 3), np.inf), ValueError, "xyz contains infinite values"),
        (
            np.full((6, 6, 3), 1e101),
            ValueError,
            r"xyz contains values up to 1e\+101 in magnitude",
        ),
        (
            np.zeros((6, 6, 3), complex),
            TypeError,
            "xyz must be a numeric array, but got dtype complex128",
        ),
    ],
)
def test_bad_organized_clouds(xyz, error, message):
    with pytest.raises(error, match=message):
        estimate_normals_organized(xyz, 0.01, 30)
    with pytest.raises(error, match=message):
        compute_fpfh_organized(xyz, np.zeros((6, 6, 3)), 0.01, 30)


def test_organized_normals_shape_mismatch():
    xyz = organized_cloud()
    with pytest.raises(
        ValueError,
        match=r"normals must have the shape of xyz, \(24, 24, 3\), but got \(24, 23, 3\)",
    ):
        compute_fpfh_organized(xyz, np.zeros((24, 23, 3)), 0.02, 100)
    with pytest.raises(ValueError, match="search must be one of"):
        estimate_normals_organized(xyz, 0.01, 30, search="brute")


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2)])
def test_tiny_organized_clouds(shape):
    xyz = organized_cloud(*shape)
    xyz[0, 0] = (0.0, 0.0, 0.5)
    for search in ("window", "tree"):
        normals = estimate_normals_organized(xyz, 0.01, 30, search=search)
        valid = ~np.isnan(xyz).any(axis=2)
        np.testing.assert_allclose(
            np.linalg.norm(normals[valid], axis=1), 1.0, atol=1e-6
        )
        features = compute_fpfh_organized(xyz, normals, 0.02, 100, search=search)
        assert np.isfinite(features).all()


# ---------------------------------------------------------------------------------------
# Patches, resizing, planes


def test_pooling_beyond_float32():
    valid = np.ones((8, 8), bool)
    with pytest.raises(
        ValueError,
        match=r"patch averages exceed the float32 range \(3\.4e38\), up to 1e\+39",
    ):
        pool_patch_features(np.full((8, 8, 2), 1e39), valid, grid=2)
    features, patch_valid = pool_patch_features(np.full((8, 8, 2), 3e38), valid, grid=2)
    assert np.isfinite(features).all()
    assert patch_valid.all()


def test_pooling_mask_errors():
    feature_map = np.zeros((8, 8, 2))
    with pytest.raises(
        TypeError, match="valid must be a boolean ndarray, but got int64"
    ):
        pool_patch_features(feature_map, np.ones((8, 8), int), grid=2)
    with pytest.raises(
        ValueError,
        match=r"valid must have the shape \(8, 8\) of feature_map's first two axes, "
        r"but got \(8, 7\)",
    ):
        pool_patch_features(feature_map, np.ones((8, 7), bool), grid=2)
    nan_map = feature_map.copy()
    nan_map[3, 3, 0] = np.nan
    with pytest.raises(
        ValueError, match="NaN or infinite values in 1 of the 64 valid pixels"
    ):
        pool_patch_features(nan_map, np.ones((8, 8), bool), grid=2)
    with pytest.raises(
        ValueError, match=r"grid \(7, 7\) is larger than the \(6, 6\) map"
    ):
        pool_patch_features(feature_map, np.ones((8, 8), bool), grid=7)


def test_scatter_errors():
    with pytest.raises(ValueError, match="flat_index repeats 1 pixels"):
        scatter_to_map(np.ones(3), [0, 0, 2], (2, 2))
    with pytest.raises(ValueError, match=r"flat_index must lie in \[0, 4\)"):
        scatter_to_map(np.ones(2), [0, 4], (2, 2))
    with pytest.raises(
        TypeError, match="flat_index must be an integer array, but got dtype float64"
    ):
        scatter_to_map(np.ones(2), [0.0, 1.0], (2, 2))


@pytest.mark.parametrize(
    "resize, image",
    [
        (resize_organized, organized_cloud(4, 4)),
        (resize_mask, np.zeros((4, 4), bool)),
        (resize_rgb, np.zeros((4, 4, 3), np.uint8)),
    ],
)
def test_resize_size_limits(resize, image):
    with pytest.raises(
        ValueError, match=r"size must be at most 2147483647 pixels in each dimension"
    ):
        resize(image, 2**40)
    with pytest.raises(
        ValueError, match="size must be >= 1 in each dimension, but got 0"
    ):
        resize(image, 0)
    with pytest.raises(TypeError, match="size must be an int or a"):
        resize(image, 1e300)


def test_resize_rgb_channel_errors():
    with pytest.raises(
        ValueError, match=r"rgb must have shape \(H, W, 3\), but got \(4, 4\)"
    ):
        resize_rgb(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(
        ValueError, match=r"rgb must have shape \(H, W, 3\), but got \(4, 4, 4\)"
    ):
        resize_rgb(np.zeros((4, 4, 4), np.uint8), 2)
    with pytest.raises(TypeError, match="rgb must have dtype uint8, but got float64"):
        resize_rgb(np.zeros((4, 4, 3)), 2)


@pytest.mark.parametrize("n_points, ransac_n", [(0, 3), (2, 3), (100, 200)])
def test_ransac_needs_enough_points(n_points, ransac_n):
    points = np.random.default_rng(0).random((n_points, 3))
    with pytest.raises(
        ValueError, match=f"at least ransac_n={ransac_n} points, but got {n_points}"
    ):
        fit_plane(points, ransac_n=ransac_n)


def test_plane_removal_without_border_points():
    xyz = np.full((40, 40, 3), np.nan, np.float32)
    rows, cols = np.mgrid[15:25, 15:25]
    xyz[15:25, 15:25] = np.stack([cols * 1e-3, rows * 1e-3, np.full((10, 10), 0.5)], -1)
    with pytest.raises(
        ValueError, match="found 0 valid border points in the strip 10 pixels wide"
    ):
        remove_background(xyz)


def test_fps_sizes():
    with pytest.raises(
        ValueError, match=r"n_samples=5 is larger than the number of points \(4\)"
    ):
        farthest_point_sampling(np.eye(4, 3), 5)
    with pytest.raises(TypeError, match="n_samples must be an int, but got float 1e"):
        farthest_point_sampling(np.eye(4, 3), 1e300)


# ---------------------------------------------------------------------------------------
# Synthesis


def test_fill_radius_beyond_image_is_clamped():
    xyz = organized_cloud(32, 32)
    xyz[np.isnan(xyz).any(axis=2)] = (0.0, 0.0, 0.5)
    anchors = [5 * 32 + 5, 20 * 32 + 20]
    clamped = synthesize_organized(xyz, anchors, kind="adding", k=20, fill_radius=32)
    huge = synthesize_organized(xyz, anchors, kind="adding", k=20, fill_radius=2**40)
    np.testing.assert_array_equal(huge[1], clamped[1])
    np.testing.assert_array_equal(huge[0], clamped[0])


def test_patch_far_outside_the_image_changes_nothing():
    xyz = organized_cloud(32, 32)
    new_xyz, mask = synthesize_organized(
        xyz, [10 * 32 + 10], kind="adding", k=20, size=1e300
    )
    assert not mask.any()
    np.testing.assert_array_equal(new_xyz, xyz)


def test_min_distance_beyond_image():
    scores = np.random.default_rng(0).random((16, 16))
    valid = np.ones((16, 16), bool)
    anchors = select_anchors(scores, valid, 3, min_distance=1e12)
    assert anchors.tolist() == [int(np.argmax(scores))]


def test_splat_skips_coordinates_beyond_int64():
    buffer = _synthesis.splat_depth(
        np.array([1e30, -1e30, 2.0, np.nan]),
        np.array([1.0, 1.0, 1e300, 0.0]),
        np.array([1.0, 2.0, 3.0, 4.0]),
        4,
        4,
    )
    assert np.isinf(buffer).all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"fx": "500"}, TypeError, "fx must be a real number, but got str '500'"),
        ({"fx": 0.0}, ValueError, "fx must be finite and nonzero, but got 0.0"),
        ({"cx": float("nan")}, ValueError, "cx must be finite, but got nan"),
        ({"cy": None}, TypeError, "cy must be a real number, but got NoneType None"),
        ({"depth_sign": 0.5}, ValueError, r"depth_sign must be \+1 or -1, but got 0.5"),
        ({"kind": "fisheye"}, ValueError, "kind must be 'pinhole' or 'orthographic'"),
    ],
)
def test_camera_model_fields(kwargs, error, message):
    fields = {
        "kind": "pinhole",
        "fx": 500.0,
        "fy": 500.0,
        "cx": 16.0,
        "cy": 16.0,
        **kwargs,
    }
    with pytest.raises(error, match=message):
        CameraModel(**fields)


def test_camera_projection_shapes():
    camera = CameraModel("pinhole", 500.0, 500.0, 16.0, 16.0)
    with pytest.raises(
        ValueError, match=r"points must have shape \(M, 3\), but got \(3, 2\)"
    ):
        camera.project(np.zeros((3, 2)))
    with pytest.raises(
        ValueError, match="u, v and depth must have the same length, but got 2, 1 and 1"
    ):
        camera.back_project([1.0, 2.0], [1.0], [0.5])
    u, v, depth = camera.project([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]])
    assert u.tolist()[0] == 16.0
    assert np.isnan(u[1])
    np.testing.assert_allclose(
        camera.back_project(u[:1], v[:1], depth[:1]), [[0.0, 0.0, 0.5]]
    )
