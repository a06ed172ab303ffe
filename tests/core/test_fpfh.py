"""Tests of FPFH: NumPy references, Open3D 0.20 parity, known cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
import reference_geometry as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from zal3d_core._kernels import _fpfh
from zal3d_core.fpfh import compute_fpfh, compute_fpfh_organized
from zal3d_core.io import read_organized, read_points
from zal3d_core.normals import (
    estimate_normals,
    estimate_normals_organized,
    median_point_spacing,
    resolve_window,
    search_tree,
    search_window,
)

relative_l1 = reference.relative_l1


def grid_points(n: int, spacing: float) -> np.ndarray:
    """An n x n grid on z = 0 in the order of its rows, shape (n * n, 3)."""
    xs, ys = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing)
    return np.column_stack([xs.ravel(), ys.ravel(), np.zeros(n * n)])


def sine_surface(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, size=(n, 2))
    return np.column_stack([xy, 0.1 * np.sin(4 * xy[:, 0]) * np.cos(3 * xy[:, 1])])


def paraboloid_patch(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.5, 0.5, size=(n, 2))
    return np.column_stack([xy, 1.0 + 0.4 * xy[:, 0] ** 2 + 0.2 * xy[:, 1] ** 2])


def sphere(n: int, seed: int) -> np.ndarray:
    directions = np.random.default_rng(seed).normal(size=(n, 3))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def read_pcd(path) -> np.ndarray:
    """Read the finite points of a PCD file as float64, the dtype Open3D takes."""
    return read_points(path).astype(np.float64)


def read_organized_pcd(path) -> np.ndarray:
    """Read an organized PCD file as (H, W, 3) float64 with NaN holes."""
    return read_organized(path).astype(np.float64)


def open3d_fpfh(points, normals, radius, max_nn) -> np.ndarray:
    o3d = pytest.importorskip("open3d")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.normals = o3d.utility.Vector3dVector(np.asarray(normals, np.float64))
    feature = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius, max_nn)
    )
    return np.asarray(feature.data).T


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def mirror_angle_blocks(features: np.ndarray) -> np.ndarray:
    """Bin b <-> 10 - b in the first and third blocks, the second block unchanged."""
    mirrored = features.copy()
    mirrored[:, 0:11] = features[:, 10::-1]
    mirrored[:, 22:33] = features[:, 32:21:-1]
    return mirrored


# --- agreement with the NumPy reference -----------------------------------------------


@pytest.mark.parametrize("max_nn", [2, 15, 60])
def test_fpfh_matches_reference(max_nn):
    points = sine_surface(250, seed=0)
    normals = estimate_normals(points, 0.15, 30, viewpoint=(0.5, 0.5, 3))
    ours = compute_fpfh(points, normals, 0.2, max_nn)
    expected = reference.fpfh(points, normals, 0.2, max_nn)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)


def test_fpfh_reference_duplicates_and_nan():
    points = sine_surface(150, seed=1)
    points = np.vstack([points, points[:20], [[np.nan, np.nan, np.nan]] * 3])
    normals = estimate_normals(points, 0.2, 30, viewpoint=(0.5, 0.5, 3))
    ours = compute_fpfh(points, normals, 0.25, 40)
    expected = reference.fpfh(points, normals, 0.25, 40)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)
    assert not np.isnan(ours).any()
    np.testing.assert_array_equal(ours[-3:], 0.0)


def test_pair_bins_match_reference():
    rng = np.random.default_rng(6)
    for _ in range(3000):
        p, q = rng.normal(size=(2, 3))
        n, m = rng.normal(size=(2, 3))
        n /= np.linalg.norm(n)
        m /= np.linalg.norm(m)
        if rng.uniform() < 0.2:
            m = n.copy()
        if rng.uniform() < 0.1:
            q = p.copy()
        expected = reference.feature_bins(*reference.pair_feature(p, n, q, m))
        assert _fpfh.pair_bins(*p, *n, *q, *m) == expected


def test_pair_bins_tie_in_acos_keeps_source():
    # |a1| = 1e-17 < |a2| = 2e-17, but acos rounds both to pi / 2, so Open3D keeps p
    # as the source: f0 = +pi / 2 (bin 8). Swapping would give -pi / 2 (bin 2).
    p, q = np.zeros(3), np.array([1.0, 0.0, 0.0])
    n = np.array([1e-17, 0.0, 1.0])
    m = np.array([2e-17, 1.0, 0.0])
    assert reference.feature_bins(*reference.pair_feature(p, n, q, m)) == (8, 0, 5)
    assert _fpfh.pair_bins(*p, *n, *q, *m) == (8, 0, 5)


def test_antiparallel_normals_fill_last_azimuth_bin():
    # f0 = atan2(+0.0, -1.0) = +pi, so bin 10; Open3D 0.20 gives bins 10, 16 and 27.
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    features = compute_fpfh(points, normals, 2.0, 10)
    expected = np.zeros((2, 33))
    expected[:, [10, 16, 27]] = 200.0
    np.testing.assert_array_equal(features, expected)


def test_fpfh_blocks_sum_to_200():
    points = sine_surface(500, seed=2)
    normals = estimate_normals(points, 0.1, 30, viewpoint=(0.5, 0.5, 3))
    features = compute_fpfh(points, normals, 0.1, 50)
    assert features.dtype == np.float32
    assert features.shape == (500, 33)
    blocks = features.reshape(-1, 3, 11).sum(axis=2)
    np.testing.assert_allclose(blocks, 200.0, rtol=1e-5)


# --- known cases ----------------------------------------------------------------------


def test_isolated_point_gets_zero_features():
    points = np.vstack([grid_points(5, 0.05), [[5.0, 5.0, 5.0]]])
    normals = estimate_normals(points, 0.1, 30)
    features = compute_fpfh(points, normals, 0.25, 100)
    assert not np.isnan(normals).any()
    assert not np.isnan(features).any()
    np.testing.assert_array_equal(normals[-1], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(features[-1], 0.0)
    np.testing.assert_allclose(features[:-1].sum(axis=1), 600.0, rtol=1e-5)
    blocks = features[:-1].reshape(-1, 3, 11).sum(axis=2)
    np.testing.assert_allclose(blocks, 200.0, rtol=1e-5)


def test_coincident_neighbours_keep_own_spfh():
    # Open3D 0.20 gives the same: the pair at distance 0 votes in the central bins of
    # the SPFH, and the weighted part skips it.
    points = np.array([[0.0, 0, 0], [0, 0, 0], [5, 5, 5], [1, 0, 0]])
    normals = np.tile([0.0, 0.0, 1.0], (4, 1))
    features = compute_fpfh(points, normals, 0.5, 10)
    expected = np.zeros((4, 33))
    expected[:2, [5, 16, 27]] = 100.0
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_flat_patch_fills_central_bins():
    points = grid_points(7, 0.01)
    normals = np.tile([0.0, 0.0, 1.0], (49, 1))
    features = compute_fpfh(points, normals, 0.035, 100)
    expected = np.zeros(33)
    expected[[5, 16, 27]] = 200.0
    np.testing.assert_allclose(features, np.tile(expected, (49, 1)), atol=1e-4)


def test_organized_nan_pixels():
    xyz = grid_points(6, 0.05).reshape(6, 6, 3)
    missing = [(0, 0), (2, 3), (3, 3), (5, 1)]
    for row, col in missing:
        xyz[row, col] = np.nan
    camera = (0.125, 0.125, 1.0)
    flat = xyz.reshape(-1, 3)
    valid = ~np.isnan(flat).any(axis=1)
    normals = estimate_normals(flat, 0.12, 30, viewpoint=camera)
    np.testing.assert_allclose(normals[valid], np.tile([0, 0, 1.0], (32, 1)), atol=1e-7)

    passed_in = compute_fpfh(flat, normals, 0.25, 100)
    dropped = compute_fpfh(flat[valid], normals[valid], 0.25, 100)
    np.testing.assert_array_equal(passed_in[valid], dropped)
    np.testing.assert_array_equal(passed_in[~valid], 0.0)
    expected = np.zeros(33)
    expected[[5, 16, 27]] = 200.0
    np.testing.assert_allclose(dropped, np.tile(expected, (32, 1)), atol=1e-4)

    organized_normals = estimate_normals_organized(xyz, 0.12, 30, viewpoint=camera)
    for search in ("window", "tree"):
        organized = compute_fpfh_organized(
            xyz, organized_normals, 0.25, 100, search=search
        )
        assert organized.shape == (6, 6, 33)
        np.testing.assert_array_equal(organized.reshape(-1, 33)[valid], dropped)
        np.testing.assert_array_equal(organized.reshape(-1, 33)[~valid], 0.0)


def test_flipped_normals_mirror_angle_blocks():
    points = sphere(600, seed=3)
    normals = estimate_normals(points, 0.25, 30)
    features = compute_fpfh(points, normals, 0.4, 60)
    flipped = compute_fpfh(points, -normals, 0.4, 60)
    error = relative_l1(flipped, mirror_angle_blocks(features))
    assert error.mean() < 1e-5
    assert np.mean(error < 1e-5) > 0.99
    # On a sphere the angles leave the central bins, so the mirror image differs.
    assert relative_l1(flipped, features).mean() > 0.05


def test_partly_flipped_normals_change_features():
    points = paraboloid_patch(400, seed=4)
    normals = estimate_normals(points, 0.12, 30, viewpoint=(0, 0, 5))
    mixed = normals.copy()
    mixed[::2] *= -1
    features = compute_fpfh(points, normals, 0.2, 60)
    changed = compute_fpfh(points, mixed, 0.2, 60)
    assert np.abs(features - changed).max() > 50


# --- Open3D parity ------------------------------------------------------------------


def assert_parity(points, normals, radius, max_nn, mean_limit, tail, tail_limit):
    ours = compute_fpfh(points, normals, radius, max_nn)
    theirs = open3d_fpfh(points, normals, radius, max_nn)
    error = relative_l1(ours, theirs)
    assert error.mean() <= mean_limit
    assert np.percentile(error, tail) <= tail_limit


@pytest.mark.parametrize(
    "make",
    [sine_surface, paraboloid_patch, sphere],
    ids=["sine", "paraboloid", "sphere"],
)
def test_parity_with_open3d_on_smooth_clouds(make):
    points = make(6000, seed=5)
    spacing = median_point_spacing(points)
    normals = estimate_normals(points, 3 * spacing, 30, viewpoint=(0.3, 0.2, 4.0))
    assert_parity(points, normals, 6 * spacing, 100, 1e-4, 99.9, 5e-3)


@pytest.mark.parametrize(
    "name", ["bunny.pcd", "milk.pcd", "cturtle.pcd"], ids=["bunny", "milk", "turtle"]
)
def test_parity_with_open3d_on_real_scans(pcl_test, name):
    points = read_pcd(pcl_test / name)
    if name == "cturtle.pcd":
        points = points[::4]
    spacing = median_point_spacing(points)
    normals = estimate_normals(points, 3 * spacing, 30)
    assert_parity(points, normals, 6 * spacing, 100, 2e-3, 99, 0.05)


def test_parity_with_open3d_on_capture(pcl_data):
    xyz = read_organized_pcd(pcl_data / "pairwise" / "capture0001.pcd")[
        150:350, 150:450
    ]
    points = xyz.reshape(-1, 3)
    points = points[~np.isnan(points).any(axis=1)]
    spacing = median_point_spacing(points)
    normals = estimate_normals(points, 3 * spacing, 30)
    assert_parity(points, normals, 6 * spacing, 100, 2e-3, 99, 0.05)


def test_parity_with_open3d_on_doubled_scan(pcl_data):
    # Every point of this room scan is stored twice, so each neighbourhood contains
    # pairs at distance 0, whose pair features are all 0.
    points = read_pcd(pcl_data / "room_scan1.pcd")[:30000]
    spacing = median_point_spacing(points)
    normals = estimate_normals(points, 3 * spacing, 30)
    assert_parity(points, normals, 6 * spacing, 100, 2e-3, 99, 0.05)


# --- properties -----------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shift=st.floats(-100, 100),
    frequency=st.floats(1.0, 6.0),
)
def test_rotation_translation_invariance(seed, shift, frequency):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, size=(400, 2))
    points = np.column_stack([xy, 0.1 * np.sin(frequency * xy[:, 0] + xy[:, 1])])
    normals = estimate_normals(points, 0.12, 30, viewpoint=(0.5, 0.5, 3))
    rotation = random_rotation(seed)
    moved = points @ rotation.T + shift
    moved_normals = normals.astype(np.float64) @ rotation.T
    features = compute_fpfh(points, normals, 0.2, 60)
    moved_features = compute_fpfh(moved, moved_normals, 0.2, 60)
    assert relative_l1(moved_features, features).mean() < 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 300))
def test_permutation_invariance(seed, n):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, size=(n, 3))
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    order = rng.permutation(n)
    features = compute_fpfh(points, normals, 0.3, 20)
    permuted = compute_fpfh(points[order], normals[order], 0.3, 20)
    # Distinct distances: the same sorted neighbour lists, so the same arithmetic.
    np.testing.assert_array_equal(permuted, features[order])


def test_permutation_invariance_with_ties():
    points = grid_points(8, 0.1)
    points[:, 2] = 0.05 * np.sin(7 * points[:, 0]) * np.cos(5 * points[:, 1])
    normals = estimate_normals(points, 0.25, 30, viewpoint=(0.35, 0.35, 2))
    order = np.random.default_rng(0).permutation(len(points))
    features = compute_fpfh(points, normals, 0.25, 30)
    permuted = compute_fpfh(points[order], normals[order], 0.25, 30)
    # Tied distances are ordered by index, which the permutation changes, so the sums
    # may differ in the last bits but the neighbour sets do not.
    np.testing.assert_allclose(permuted, features[order], rtol=1e-5, atol=1e-4)


# --- organized clouds -----------------------------------------------------------------


def wavy_organized(height: int, width: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(-0.3, 0.3, width), np.linspace(-0.2, 0.2, height))
    return np.stack([xs, ys, 1.0 + 0.2 * np.sin(6 * xs) * np.cos(4 * ys)], axis=2)


def test_organized_tree_equals_unorganized():
    xyz = wavy_organized(20, 30)
    xyz[5:8, 10:12] = np.nan
    normals = estimate_normals_organized(xyz, 0.05, 30, search="tree")
    features = compute_fpfh_organized(xyz, normals, 0.08, 60, search="tree")
    flat = compute_fpfh(xyz.reshape(-1, 3), normals.reshape(-1, 3), 0.08, 60)
    np.testing.assert_array_equal(features.reshape(-1, 33), flat)


def test_full_window_equals_tree():
    xyz = wavy_organized(16, 20)
    xyz[3, 4:9] = np.nan
    normals = estimate_normals_organized(xyz, 0.05, 30, search="tree")
    window = compute_fpfh_organized(xyz, normals, 0.1, 80, search="window", window=20)
    tree = compute_fpfh_organized(xyz, normals, 0.1, 80, search="tree")
    np.testing.assert_array_equal(window, tree)


def test_window_fpfh_close_to_tree_on_capture(pcl_data):
    xyz = read_organized_pcd(pcl_data / "pairwise" / "capture0001.pcd")[
        100:300, 150:450
    ]
    pitch = median_point_spacing(xyz)
    normals = estimate_normals_organized(xyz, 3 * pitch, 30, search="tree")
    radius = 6 * pitch
    window = compute_fpfh_organized(xyz, normals, radius, 100, search="window")
    tree = compute_fpfh_organized(xyz, normals, radius, 100, search="tree")
    valid = ~np.isnan(xyz).any(axis=2)
    error = relative_l1(window[valid], tree[valid])
    assert error.mean() < 0.01

    half = resolve_window(xyz, radius, None)
    window_sets = search_window(xyz, radius, 100, half)
    tree_sets = search_tree(xyz.reshape(-1, 3)[valid.ravel()], radius, 100)
    rows = np.flatnonzero(valid.ravel())
    same = [
        np.array_equal(
            window_sets.indices[window_sets.indptr[r] : window_sets.indptr[r + 1]],
            rows[tree_sets.indices[tree_sets.indptr[c] : tree_sets.indptr[c + 1]]],
        )
        for c, r in enumerate(rows)
    ]
    assert np.mean(same) > 0.97


# --- bad input ------------------------------------------------------------------------


def test_rejects_normals_of_other_length():
    points = grid_points(3, 0.1)
    with pytest.raises(
        ValueError,
        match=r"normals must have one row per point, shape \(9, 3\), but got \(8, 3\)",
    ):
        compute_fpfh(points, np.tile([0, 0, 1.0], (8, 1)), 0.2, 10)
    with pytest.raises(
        ValueError, match=r"normals must have shape \(N, 3\), but got \(9, 2\)"
    ):
        compute_fpfh(points, np.zeros((9, 2)), 0.2, 10)


@pytest.mark.parametrize(
    "bad, count", [(np.nan, 1), (0.0, 1), (2.0, 1)], ids=["nan", "zero", "long"]
)
def test_rejects_invalid_normals(bad, count):
    points = grid_points(3, 0.1)
    normals = np.tile([0, 0, 1.0], (9, 1))
    normals[4] = bad
    with pytest.raises(
        ValueError,
        match=f"but {count} of 9 rows at valid points are NaN, zero or not of length 1",
    ):
        compute_fpfh(points, normals, 0.2, 10)


def test_normals_of_missing_points_are_ignored():
    points = grid_points(3, 0.1)
    points[4] = np.nan
    normals = np.tile([0, 0, 1.0], (9, 1))
    normals[4] = np.nan
    features = compute_fpfh(points, normals, 0.2, 10)
    np.testing.assert_array_equal(features[4], 0.0)


def test_rejects_bad_points():
    normals = np.tile([0, 0, 1.0], (5, 1))
    with pytest.raises(
        ValueError, match=r"points must have shape \(N, 3\), but got \(5, 4\)"
    ):
        compute_fpfh(np.zeros((5, 4)), normals, 0.1, 10)
    with pytest.raises(TypeError, match="points must be a numeric array"):
        compute_fpfh(np.array([["x", "y", "z"]] * 5), normals, 0.1, 10)
    with pytest.raises(
        ValueError, match="points must contain at least one valid point"
    ):
        compute_fpfh(np.full((5, 3), np.nan), normals, 0.1, 10)


@pytest.mark.parametrize("radius", [0.0, -0.5, np.nan])
def test_rejects_bad_radius(radius):
    points = grid_points(3, 0.1)
    normals = np.tile([0, 0, 1.0], (9, 1))
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        compute_fpfh(points, normals, radius, 10)


def test_rejects_bad_max_nn():
    points = grid_points(3, 0.1)
    normals = np.tile([0, 0, 1.0], (9, 1))
    with pytest.raises(ValueError, match="max_nn must be >= 1, but got 0"):
        compute_fpfh(points, normals, 0.2, 0)


def test_organized_rejects_bad_arguments():
    xyz = grid_points(4, 0.1).reshape(4, 4, 3)
    normals = np.tile([0, 0, 1.0], (4, 4, 1))
    with pytest.raises(
        ValueError,
        match=r"normals must have the shape of xyz, \(4, 4, 3\), but got \(16, 3\)",
    ):
        compute_fpfh_organized(xyz, normals.reshape(-1, 3), 0.2, 10)
    with pytest.raises(TypeError, match="normals must be a numeric array"):
        compute_fpfh_organized(xyz, "normals", 0.2, 10)
    with pytest.raises(ValueError, match="search must be one of"):
        compute_fpfh_organized(xyz, normals, 0.2, 10, search="brute")
    with pytest.raises(ValueError, match="xyz must contain at least one valid point"):
        compute_fpfh_organized(np.full((4, 4, 3), np.nan), normals, 0.2, 10)


def test_n_jobs_gives_same_features():
    points = sine_surface(3000, seed=8)
    normals = estimate_normals(points, 0.05, 30, viewpoint=(0.5, 0.5, 3))
    one_thread = compute_fpfh(points, normals, 0.08, 80, n_jobs=1)
    two_threads = compute_fpfh(points, normals, 0.08, 80, n_jobs=2)
    np.testing.assert_array_equal(one_thread, two_threads)
