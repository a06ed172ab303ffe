"""Tests of normal estimation, the hybrid neighbour search and the point spacing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference_geometry as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from zal3d_core._kernels import _window
from zal3d_core.io import read_organized, read_points
from zal3d_core.neighbors import KDTree
from zal3d_core.normals import (
    estimate_normals,
    estimate_normals_organized,
    median_point_spacing,
    search_tree,
    search_window,
    window_half_width,
    window_pitch,
)


def grid_points(n: int, spacing: float) -> np.ndarray:
    """An n x n grid on z = 0 in the order of its rows, shape (n * n, 3)."""
    xs, ys = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing)
    return np.column_stack([xs.ravel(), ys.ravel(), np.zeros(n * n)])


def wavy_surface(n: int, seed: int, noise: float = 0.0) -> np.ndarray:
    """Random points on a smooth sine surface over the unit square."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, size=(n, 2))
    z = 0.1 * np.sin(3 * xy[:, 0]) * np.cos(2 * xy[:, 1])
    points = np.column_stack([xy, z])
    return points + noise * rng.normal(size=points.shape)


def read_pcd(path) -> np.ndarray:
    """Read the finite points of a PCD file as float64, the dtype Open3D takes."""
    return read_points(path).astype(np.float64)


def read_organized_pcd(path) -> np.ndarray:
    """Read an organized PCD file as (H, W, 3) float64 with NaN holes."""
    return read_organized(path).astype(np.float64)


def open3d_normals(points: np.ndarray, radius: float, max_nn: int) -> np.ndarray:
    o3d = pytest.importorskip("open3d")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius, max_nn))
    return np.asarray(cloud.normals)


def well_posed_rows(points, radius, max_nn, rows) -> np.ndarray:
    """Mark the rows whose normal is well defined and whose neighbourhood is the same
    in Open3D's search and ours.

    Well defined: the smallest covariance eigenvalue is below half of the middle one,
    and the middle one is above 1e-4 of the largest (not nearly collinear). Kinect
    depth is quantized, so ties at the max_nn-th distance are common, and Open3D breaks
    them differently: those rows are left out.
    """
    o3d = pytest.importorskip("open3d")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    search = o3d.geometry.KDTreeFlann(cloud)
    ours = search_tree(points, radius, max_nn)
    keep = []
    for row in rows:
        _, theirs, _ = search.search_hybrid_vector_3d(points[row], radius, max_nn)
        mine = ours.indices[ours.indptr[row] : ours.indptr[row + 1]]
        if len(mine) < 3 or set(theirs) != set(mine.tolist()):
            keep.append(False)
            continue
        eigenvalues = np.linalg.eigvalsh(np.cov(points[mine].T, bias=True))
        keep.append(
            eigenvalues[0] < 0.5 * eigenvalues[1]
            and eigenvalues[1] > 1e-4 * eigenvalues[2]
        )
    return np.asarray(keep)


# --- the neighbour search -------------------------------------------------------------


@pytest.mark.parametrize("max_nn", [1, 7, 40])
def test_search_tree_matches_brute_force(max_nn):
    points = wavy_surface(300, seed=1)
    found = search_tree(points, 0.12, max_nn)
    expected = reference.hybrid_neighbours(points, 0.12, max_nn)
    for i, row in enumerate(expected):
        got = found.indices[found.indptr[i] : found.indptr[i + 1]]
        np.testing.assert_array_equal(got, row)


def test_search_tree_matches_kdtree_hybrid():
    points = wavy_surface(2000, seed=2, noise=0.002)
    found = search_tree(points, 0.05, 30)
    distances, idx = KDTree(points).query_radius(
        points, np.nextafter(0.05, 0), max_nn=30
    )
    for i in range(0, len(points), 3):
        row = idx[i][idx[i] < len(points)]
        np.testing.assert_array_equal(
            found.indices[found.indptr[i] : found.indptr[i + 1]], row
        )
        np.testing.assert_allclose(
            np.sqrt(found.d2[found.indptr[i] : found.indptr[i + 1]]),
            distances[i][: len(row)],
            rtol=1e-12,
        )


def test_search_radius_is_strict():
    # A 5 x 5 grid of spacing 0.05: from the centre, 4 points lie at exactly 0.1 and
    # are outside, as in Open3D 0.20's hybrid search.
    found = search_tree(grid_points(5, 0.05), 0.1, 30)
    assert found.indptr[13] - found.indptr[12] == 9


def test_search_keeps_nearest_on_ties():
    # The centre of a 3 x 3 grid has four neighbours at distance 1. With max_nn = 3 it
    # keeps itself and the two of them with the lowest indices.
    found = search_tree(grid_points(3, 1.0), 1.5, 3)
    np.testing.assert_array_equal(
        found.indices[found.indptr[4] : found.indptr[5]], [4, 1, 3]
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 300),
    levels=st.sampled_from([3, 50, 10**6]),
)
def test_sort_and_select_pairs_property(seed, size, levels):
    # Few distinct levels give many tied distances, which must be ordered by index.
    rng = np.random.default_rng(seed)
    d2 = rng.integers(0, levels, size).astype(np.float64) / levels
    idx = rng.permutation(size).astype(np.intp)
    expected = np.lexsort((idx, d2))
    sorted_d2, sorted_idx = d2.copy(), idx.copy()
    scratch = _window.make_workspace(max(size, 1))
    _window.sort_pairs(sorted_d2, sorted_idx, size, scratch[2], scratch[3], scratch[4])
    np.testing.assert_array_equal(sorted_idx, idx[expected])
    np.testing.assert_array_equal(sorted_d2, d2[expected])
    if size:
        nth = int(rng.integers(1, size + 1))
        selected_d2, selected_idx = d2.copy(), idx.copy()
        _window.select_pairs(selected_d2, selected_idx, size, nth)
        assert set(selected_idx[:nth].tolist()) == set(idx[expected[:nth]].tolist())


def test_search_tree_buffer_overflow():
    # 4000 points within the radius of each other and max_nn = 10: the candidate
    # buffer (4 * max_nn) fills many times before the search ends.
    points = np.random.default_rng(3).uniform(0, 0.1, size=(4000, 3))
    found = search_tree(points, 1.0, 10)
    xyz = reference.centred(points)
    for i in range(50):
        d2 = np.sum((xyz - xyz[i]) ** 2, axis=1)
        expected = np.lexsort((np.arange(len(points)), d2))[:10]
        np.testing.assert_array_equal(
            found.indices[found.indptr[i] : found.indptr[i + 1]], expected
        )


def test_search_full_window_equals_tree():
    xyz = wavy_surface(900, seed=3).reshape(30, 30, 3)
    xyz[4, 5] = np.nan
    window = search_window(xyz, 0.3, 25, half=29)
    flat = xyz.reshape(-1, 3)
    valid = ~np.isnan(flat).any(axis=1)
    tree = search_tree(flat[valid], 0.3, 25)
    rows = np.flatnonzero(valid)
    for compact, flat_row in enumerate(rows):
        got = window.indices[window.indptr[flat_row] : window.indptr[flat_row + 1]]
        expected = rows[tree.indices[tree.indptr[compact] : tree.indptr[compact + 1]]]
        np.testing.assert_array_equal(got, expected)
    assert window.indptr[4 * 30 + 6] - window.indptr[4 * 30 + 5] == 0


# --- agreement with NumPy references --------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_normals_match_eigh_reference(seed):
    points = wavy_surface(400, seed=seed, noise=0.003)
    normals, curvature = estimate_normals(
        points, 0.12, 30, viewpoint=(0.5, 0.5, 5.0), return_curvature=True
    )
    expected, expected_curvature = reference.normals(points, 0.12, 30, (0.5, 0.5, 5.0))
    dots = np.sum(normals * expected, axis=1)
    assert dots.min() > 1 - 1e-6
    np.testing.assert_allclose(curvature, expected_curvature, rtol=1e-4, atol=1e-7)


def test_sphere_normals_face_viewpoint():
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(1500, 3))
    sphere = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    normals, curvature = estimate_normals(
        sphere, 0.25, 30, viewpoint=(0, 0, 0), return_curvature=True
    )
    # Seen from the centre, every normal of the sphere points inward.
    assert np.sum(normals * -sphere, axis=1).min() > 0.99
    assert (curvature > 0).all()
    assert (curvature < 1 / 3).all()


def test_missing_rows_get_nan_normals():
    points = wavy_surface(200, seed=4)
    points[[3, 50]] = np.nan
    normals, curvature = estimate_normals(points, 0.2, 20, return_curvature=True)
    assert normals.dtype == np.float32
    assert curvature.dtype == np.float32
    assert np.isnan(normals[[3, 50]]).all()
    assert np.isnan(curvature[[3, 50]]).all()
    present = np.delete(np.arange(200), [3, 50])
    np.testing.assert_array_equal(
        normals[present], estimate_normals(points[present], 0.2, 20)
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 120),
    missing=st.floats(0.0, 0.3),
    radius=st.floats(0.05, 1.0),
    max_nn=st.integers(1, 40),
)
def test_normals_unit_length_property(seed, n, missing, radius, max_nn):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
    points[rng.uniform(size=n) < missing] = np.nan
    points[0] = (0.0, 0.0, 0.5)
    normals = estimate_normals(points, radius, max_nn)
    valid = ~np.isnan(points).any(axis=1)
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=1), 1.0, atol=1e-6)
    assert np.isnan(normals[~valid]).all()


# --- known cases ----------------------------------------------------------------------


def test_isolated_point_gets_upward_normal():
    points = np.vstack([grid_points(5, 0.05), [[5.0, 5.0, 5.0]]])
    normals, curvature = estimate_normals(points, 0.1, 30, return_curvature=True)
    assert not np.isnan(normals).any()
    # Fewer than 3 neighbours: (0, 0, 1) as Open3D 0.20, not flipped to the viewpoint.
    np.testing.assert_array_equal(normals[-1], [0.0, 0.0, 1.0])
    assert curvature[-1] == 0.0
    np.testing.assert_allclose(np.abs(normals[:-1, 2]), 1.0)


def test_two_point_cloud_gets_fallback_normals():
    normals = estimate_normals([[0.0, 0, 0], [0.01, 0, 0]], 1.0, 10)
    np.testing.assert_array_equal(normals, [[0, 0, 1], [0, 0, 1]])


def test_coincident_points_get_fallback_normal():
    normals, curvature = estimate_normals(
        np.ones((4, 3)), 0.5, 10, viewpoint=(0, 0, -5), return_curvature=True
    )
    np.testing.assert_array_equal(normals, np.tile([0.0, 0.0, 1.0], (4, 1)))
    np.testing.assert_array_equal(curvature, 0.0)


def test_collinear_points_get_orthogonal_normal():
    points = np.column_stack([np.linspace(0, 1, 11), np.zeros(11), np.zeros(11)])
    normals = estimate_normals(points, 0.5, 10)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normals[:, 0], 0.0, atol=1e-7)


@pytest.mark.parametrize("offset", [0.0, 1.0, 500.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_far_from_origin_keeps_precision(offset, dtype):
    xs, ys = np.meshgrid(np.arange(5) * 1e-3, np.arange(5) * 1e-3)
    points = np.column_stack([xs.ravel(), ys.ravel(), 0.1 * xs.ravel()]) + offset
    normals = estimate_normals(points.astype(dtype), 0.01, 30)
    expected = np.array([-0.1, 0.0, 1.0]) / np.linalg.norm([-0.1, 0.0, 1.0])
    cosines = np.abs(normals.astype(np.float64) @ expected)
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))
    limit = 0.1 if (dtype == np.float32 and offset == 500.0) else 1e-3
    assert angles.max() < limit


def test_organized_nan_pixels_give_nan_normals():
    xyz = grid_points(6, 0.05).reshape(6, 6, 3)
    for row, col in [(0, 0), (2, 3), (3, 3), (5, 1)]:
        xyz[row, col] = np.nan
    for search in ("window", "tree"):
        normals = estimate_normals_organized(
            xyz, 0.12, 30, viewpoint=(0.125, 0.125, 1.0), search=search
        )
        valid = ~np.isnan(xyz).any(axis=2)
        assert normals.shape == (6, 6, 3)
        np.testing.assert_allclose(
            normals[valid], np.tile([0, 0, 1.0], (32, 1)), atol=1e-7
        )
        assert np.isnan(normals[~valid]).all()


# --- organized clouds -----------------------------------------------------------------


def test_organized_tree_equals_unorganized():
    xyz = wavy_surface(400, seed=7, noise=0.002).reshape(20, 20, 3)
    xyz[3:5, 7:9] = np.nan
    normals, curvature = estimate_normals_organized(
        xyz, 0.15, 20, search="tree", return_curvature=True
    )
    flat, flat_curvature = estimate_normals(
        xyz.reshape(-1, 3), 0.15, 20, return_curvature=True
    )
    np.testing.assert_array_equal(normals.reshape(-1, 3), flat)
    np.testing.assert_array_equal(curvature.reshape(-1), flat_curvature)


def test_full_window_equals_tree():
    xs, ys = np.meshgrid(np.linspace(-0.2, 0.2, 24), np.linspace(-0.2, 0.2, 18))
    xyz = np.stack([xs, ys, 1.0 + 0.3 * xs**2 + 0.1 * np.sin(5 * ys)], axis=2)
    xyz[5, 5:9] = np.nan
    window = estimate_normals_organized(xyz, 0.06, 30, search="window", window=24)
    tree = estimate_normals_organized(xyz, 0.06, 30, search="tree")
    np.testing.assert_array_equal(window, tree)


def test_window_half_width_rule():
    assert window_half_width(0.03, 0.01) == 5
    assert window_half_width(0.001, 0.01) == 1
    assert window_half_width(10.0, 0.01) == 32
    assert window_half_width(0.03, 0.0) == 32


def test_window_pitch_takes_finer_axis():
    xs, ys = np.meshgrid(np.arange(10) * 0.01, np.arange(8) * 0.03)
    xyz = np.stack([xs, ys, np.zeros_like(xs)], axis=2)
    xyz[2, 3] = np.nan
    assert window_pitch(xyz) == pytest.approx(0.01)
    assert window_pitch(np.full((3, 3, 3), np.nan)) == 0.0
    # Radius 0.04 over the finer pitch 0.01: ceil(1.5 * 4) = 6.
    assert estimate_normals_organized(xyz, 0.04, 30, window=None).shape == (8, 10, 3)
    assert window_half_width(0.04, window_pitch(xyz)) == 6


def test_window_matches_tree_on_capture(pcl_data):
    xyz = read_organized_pcd(pcl_data / "pairwise" / "capture0001.pcd")[
        100:260, 200:400
    ]
    pitch = median_point_spacing(xyz)
    radius = 3 * pitch
    window = estimate_normals_organized(xyz, radius, 30, search="window")
    tree = estimate_normals_organized(xyz, radius, 30, search="tree")
    valid = ~np.isnan(xyz).any(axis=2)
    dots = np.abs(np.sum(window[valid] * tree[valid], axis=1))
    assert np.mean(dots > 1 - 1e-6) > 0.95
    assert np.mean(dots > 0.99) > 0.99


# --- Open3D parity ------------------------------------------------------------------


def assert_normals_match_open3d(points, radius, max_nn, overall=0.999):
    ours = estimate_normals(points, radius, max_nn).astype(np.float64)
    theirs = open3d_normals(points, radius, max_nn)
    dots = np.abs(np.sum(ours * theirs, axis=1))
    rows = np.random.default_rng(0).choice(len(points), min(400, len(points)), False)
    clear = well_posed_rows(points, radius, max_nn, rows)
    assert clear.mean() > 0.5
    assert dots[rows][clear].min() > 1 - 1e-6
    assert np.mean(dots > 1 - 1e-6) > overall


def test_normals_match_open3d_on_bunny(pcl_test):
    points = read_pcd(pcl_test / "bunny.pcd")
    spacing = median_point_spacing(points)
    assert_normals_match_open3d(points, 3 * spacing, 30)


def test_normals_match_open3d_on_milk(pcl_test):
    points = read_pcd(pcl_test / "milk.pcd")
    spacing = median_point_spacing(points)
    assert_normals_match_open3d(points, 3 * spacing, 30)


def test_normals_match_open3d_on_turtle(pcl_test):
    points = read_pcd(pcl_test / "cturtle.pcd")[::8]
    spacing = median_point_spacing(points)
    assert_normals_match_open3d(points, 3 * spacing, 30)


def test_normals_match_open3d_on_capture(pcl_data):
    xyz = read_organized_pcd(pcl_data / "pairwise" / "capture0001.pcd")[::2, ::2]
    points = xyz.reshape(-1, 3)
    points = points[~np.isnan(points).any(axis=1)]
    spacing = median_point_spacing(points)
    # Ties at the max_nn-th neighbour of quantized depth change about 0.6 % of normals.
    assert_normals_match_open3d(points, 3 * spacing, 30, overall=0.99)


def test_normals_match_pcl_reference_on_bunny(pcl_test):
    o3d = pytest.importorskip("open3d")
    cloud = o3d.io.read_point_cloud(str(pcl_test / "bun0.pcd"))
    assert cloud.has_normals()
    points = np.asarray(cloud.points)
    ours = estimate_normals(points, 3 * median_point_spacing(points), 30)
    dots = np.abs(np.sum(ours * np.asarray(cloud.normals), axis=1))
    # PCL's stored normals come from other search parameters: a loose check.
    assert np.median(dots) > 0.95


# --- point spacing --------------------------------------------------------------------


def test_median_spacing_of_grids():
    assert median_point_spacing(grid_points(6, 0.05)) == pytest.approx(0.05)
    xyz = grid_points(6, 0.05).reshape(6, 6, 3)
    xyz[2, 2] = np.nan
    assert median_point_spacing(xyz) == pytest.approx(0.05)


def test_median_spacing_ignores_duplicates():
    points = grid_points(4, 0.02)
    assert median_point_spacing(np.vstack([points, points])) == pytest.approx(0.02)
    xyz = np.repeat(points.reshape(4, 4, 3), 2, axis=1)
    assert median_point_spacing(xyz) == pytest.approx(0.02)


def test_median_spacing_anisotropic_grid():
    xs, ys = np.meshgrid(np.arange(10) * 0.01, np.arange(10) * 0.03)
    xyz = np.stack([xs, ys, np.zeros_like(xs)], axis=2)
    # 90 horizontal pairs at 0.01 and 90 vertical pairs at 0.03.
    assert median_point_spacing(xyz) == pytest.approx(0.02)


def test_median_spacing_matches_scipy_on_real_scan(pcl_test):
    cKDTree = pytest.importorskip("scipy.spatial").cKDTree
    points = read_pcd(pcl_test / "milk.pcd")
    distances, _ = cKDTree(points).query(points, k=2)
    assert median_point_spacing(points) == pytest.approx(np.median(distances[:, 1]))


def test_median_spacing_rejects_single_point():
    with pytest.raises(ValueError, match="at least 2 distinct valid"):
        median_point_spacing([[0.0, 0, 0], [0, 0, 0], [np.nan, 0, 0]])
    xyz = np.full((3, 3, 3), np.nan)
    xyz[1, 1] = 0.0
    with pytest.raises(ValueError, match="no pixel pitch|has no two"):
        median_point_spacing(xyz)


# --- bad input ------------------------------------------------------------------------


def test_rejects_bad_points_shape():
    with pytest.raises(
        ValueError, match=r"points must have shape \(N, 3\), but got \(5, 4\)"
    ):
        estimate_normals(np.zeros((5, 4)), 0.1, 10)
    with pytest.raises(
        ValueError, match=r"points must have shape \(N, 3\), but got \(5,\)"
    ):
        estimate_normals(np.zeros(5), 0.1, 10)
    with pytest.raises(ValueError, match=r"\(4, 4, 3\).*reshape\(-1, 3\)"):
        estimate_normals(np.zeros((4, 4, 3)), 0.1, 10)


def test_rejects_non_numeric_points():
    with pytest.raises(TypeError, match="points must be a numeric array"):
        estimate_normals(np.array([["a", "b", "c"]]), 0.1, 10)
    with pytest.raises(TypeError, match="points must be a numeric array"):
        estimate_normals("points", 0.1, 10)


def test_rejects_all_nan_points():
    with pytest.raises(
        ValueError, match="points must contain at least one valid point"
    ):
        estimate_normals(np.full((4, 3), np.nan), 0.1, 10)
    with pytest.raises(ValueError, match="xyz must contain at least one valid point"):
        estimate_normals_organized(np.full((2, 2, 3), np.nan), 0.1, 10)


def test_rejects_infinite_points():
    points = np.zeros((3, 3))
    points[1, 2] = np.inf
    with pytest.raises(ValueError, match="points contains infinite values"):
        estimate_normals(points, 0.1, 10)


@pytest.mark.parametrize("radius", [0.0, -1.0, np.nan, np.inf])
def test_rejects_bad_radius(radius):
    with pytest.raises(
        ValueError, match=r"radius must be a finite number > 0, but got"
    ):
        estimate_normals(np.zeros((3, 3)), radius, 10)


def test_rejects_radius_of_wrong_type():
    with pytest.raises(TypeError, match="radius must be a real number"):
        estimate_normals(np.zeros((3, 3)), "0.1", 10)


@pytest.mark.parametrize("max_nn", [0, -3])
def test_rejects_bad_max_nn(max_nn):
    with pytest.raises(ValueError, match=f"max_nn must be >= 1, but got {max_nn}"):
        estimate_normals(np.zeros((3, 3)), 0.1, max_nn)
    with pytest.raises(TypeError, match="max_nn must be an int"):
        estimate_normals(np.zeros((3, 3)), 0.1, 2.5)


def test_rejects_bad_viewpoint():
    with pytest.raises(
        ValueError, match=r"viewpoint must have shape \(3,\), but got \(2,\)"
    ):
        estimate_normals(np.zeros((3, 3)), 0.1, 10, viewpoint=(0, 0))
    with pytest.raises(ValueError, match="viewpoint must be finite"):
        estimate_normals(np.zeros((3, 3)), 0.1, 10, viewpoint=(0, np.nan, 0))


def test_organized_rejects_bad_arguments():
    xyz = grid_points(4, 0.1).reshape(4, 4, 3)
    with pytest.raises(
        ValueError, match=r"xyz must have shape \(H, W, 3\), but got \(16, 3\)"
    ):
        estimate_normals_organized(xyz.reshape(-1, 3), 0.2, 10)
    with pytest.raises(ValueError, match="search must be one of"):
        estimate_normals_organized(xyz, 0.2, 10, search="grid")
    with pytest.raises(ValueError, match="window must be >= 1, but got 0"):
        estimate_normals_organized(xyz, 0.2, 10, window=0)


def test_n_jobs_gives_same_normals():
    points = wavy_surface(3000, seed=9, noise=0.001)
    one_thread = estimate_normals(points, 0.05, 30, n_jobs=1)
    two_threads = estimate_normals(points, 0.05, 30, n_jobs=2)
    np.testing.assert_array_equal(one_thread, two_threads)
    with pytest.raises(ValueError, match="n_jobs must be a nonzero int"):
        estimate_normals(points, 0.05, 30, n_jobs=0)


def test_import_compiles_nothing():
    code = (
        "import zal3d_core, zal3d_core.normals, zal3d_core.fpfh\n"
        "from zal3d_core._kernels import _fpfh, _normals, _window\n"
        "kernels = [_window.tree_search, _window.window_search, _window.pack_rows,\n"
        "           _normals.normals_from_neighbours, _fpfh.spfh, _fpfh.fpfh,\n"
        "           _fpfh.pair_bins]\n"
        "assert all(not kernel.signatures for kernel in kernels), kernels\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
