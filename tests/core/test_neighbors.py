"""KDTree against scipy's cKDTree and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import cKDTree

from zal3d_core import KDTree


def brute_knn(points, queries, k):
    d = np.sqrt(((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    # Sort by (distance, index), the order the tree promises.
    order = np.lexsort((np.broadcast_to(np.arange(len(points)), d.shape), d), axis=1)
    return np.take_along_axis(d, order, 1)[:, :k], order[:, :k]


@pytest.mark.parametrize("n, dim", [(1, 3), (7, 3), (500, 3), (3000, 3), (400, 2), (300, 9)])
def test_query_matches_brute_force(n, dim):
    rng = np.random.default_rng(n + dim)
    points = rng.standard_normal((n, dim))
    queries = rng.standard_normal((50, dim))
    k = min(n, 12)
    distances, indices = KDTree(points).query(queries, k)
    ref_d, ref_i = brute_knn(points, queries, k)
    np.testing.assert_allclose(distances, ref_d, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(indices, ref_i)


def test_query_matches_ckdtree_on_real_scan(pcl_test):
    import open3d as o3d

    points = np.asarray(o3d.io.read_point_cloud(str(pcl_test / "cturtle.pcd")).points)
    queries = points[::97]
    distances, indices = KDTree(points).query(queries, 16)
    ref_d, ref_i = cKDTree(points).query(queries, 16)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-12, atol=1e-12)
    # Ties aside: where the distance is unique the indices agree.
    unique = np.diff(ref_d, axis=1, prepend=-1.0) > 1e-12
    unique[:, :-1] &= np.diff(ref_d, axis=1) > 1e-12
    assert (indices[unique] == ref_i[unique]).all()


def test_query_radius_matches_ckdtree():
    rng = np.random.default_rng(3)
    points = rng.random((4000, 3))
    queries = rng.random((200, 3))
    distances, indices = KDTree(points).query_radius(queries, 0.08)
    expected = cKDTree(points).query_ball_point(queries, 0.08)
    for dist, idx, ref in zip(distances, indices, expected):
        assert sorted(idx.tolist()) == sorted(ref)
        assert np.all(np.diff(dist) >= 0)


def test_query_radius_distances_exact():
    rng = np.random.default_rng(4)
    points = rng.random((1000, 3))
    queries = rng.random((30, 3))
    distances, indices = KDTree(points).query_radius(queries, 0.15)
    for q, dist, idx in zip(queries, distances, indices):
        np.testing.assert_allclose(dist, np.linalg.norm(points[idx] - q, axis=1), atol=1e-12)


def test_hybrid_matches_ckdtree_with_upper_bound():
    rng = np.random.default_rng(5)
    points = rng.random((3000, 3))
    queries = rng.random((100, 3))
    distances, indices = KDTree(points).query_radius(queries, 0.05, max_nn=10)
    ref_d, ref_i = cKDTree(points).query(queries, 10, distance_upper_bound=0.05)
    np.testing.assert_allclose(distances, ref_d, atol=1e-12)
    np.testing.assert_array_equal(indices, ref_i)


def test_hybrid_pads_with_inf_and_n():
    points = np.array([[0.0, 0, 0], [1, 0, 0], [5, 5, 5]])
    distances, indices = KDTree(points).query_radius([[0.1, 0, 0]], 1.0, max_nn=5)
    np.testing.assert_allclose(distances[0, :2], [0.1, 0.9])
    assert np.isinf(distances[0, 2:]).all()
    assert indices[0].tolist() == [0, 1, 3, 3, 3]


def test_radius_boundary_is_inclusive():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    _, indices = KDTree(points).query_radius([0.0, 0.0], 1.0)
    assert indices.tolist() == [0, 1]


def test_k_larger_than_tree_raises():
    bank = [[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]]
    with pytest.raises(ValueError, match=r"k=8 is larger than the number of points in the tree \(5\)"):
        KDTree(bank).query([[0.1, 0.1]], k=8)


def test_k_equal_to_tree_size_and_ties():
    bank = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], float)
    distances, indices = KDTree(bank).query([[0.1, 0.1]], k=5)
    np.testing.assert_allclose(distances[0], [0.1414214, 0.9055385, 0.9055385, 1.2727922, 2.6870058], atol=1e-7)
    # Indices 1 and 2 lie at the same distance and come in index order.
    assert indices[0].tolist() == [0, 1, 2, 3, 4]


def test_upper_bound_pads_missing_neighbours():
    bank = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], float)
    distances, indices = KDTree(bank).query([[0.1, 0.1]], k=3, distance_upper_bound=0.5)
    assert indices[0].tolist() == [0, 5, 5]
    assert np.isinf(distances[0, 1:]).all()


def test_duplicates_and_identical_points():
    points = np.zeros((100, 3))
    distances, indices = KDTree(points, leaf_size=4).query([[0.0, 0, 0]], 10)
    assert indices[0].tolist() == list(range(10))
    assert (distances == 0).all()


def test_far_from_origin_keeps_precision():
    rng = np.random.default_rng(6)
    local = rng.random((2000, 3)) * 1e-3
    offset = np.array([5e5, 4e6, 100.0])
    q = local[:20] + 1e-5
    d_local, i_local = KDTree(local).query(q, 8)
    d_far, i_far = KDTree(local + offset).query(q + offset, 8)
    np.testing.assert_array_equal(i_local, i_far)
    np.testing.assert_allclose(d_local, d_far, atol=1e-9)


def test_n_jobs_gives_identical_results():
    rng = np.random.default_rng(7)
    points = rng.random((5000, 3))
    tree = KDTree(points)
    a = tree.query(points[:1000], 9, n_jobs=1)
    b = tree.query(points[:1000], 9, n_jobs=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize(
    "points, error, match",
    [
        (np.zeros((0, 3)), ValueError, "at least 1 valid points"),
        (np.array([[0.0, np.nan, 0]]), ValueError, "contains NaN in 1 of 1 rows"),
        (np.array([[0.0, np.inf, 0]]), ValueError, "infinite values"),
        (np.zeros(5), ValueError, r"shape \(N, D\), but got \(5,\)"),
        (np.array([["a", "b"]]), TypeError, "numeric array"),
    ],
)
def test_bad_points(points, error, match):
    with pytest.raises(error, match=match):
        KDTree(points)


def test_bad_queries_and_arguments():
    tree = KDTree(np.random.default_rng(0).random((10, 3)))
    with pytest.raises(ValueError, match=r"queries must have shape \(M, 3\)"):
        tree.query(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="queries contains NaN or infinite values in 1 rows"):
        tree.query([[np.nan, 0, 0]], 1)
    with pytest.raises(ValueError, match="k must be >= 1, but got 0"):
        tree.query([[0, 0, 0]], 0)
    with pytest.raises(TypeError, match="k must be an int"):
        tree.query([[0, 0, 0]], 1.5)
    with pytest.raises(ValueError, match="radius must be a finite number > 0, but got -1.0"):
        tree.query_radius([[0, 0, 0]], -1.0)
    with pytest.raises(ValueError, match="max_nn must be >= 1"):
        tree.query_radius([[0, 0, 0]], 0.1, max_nn=0)
    with pytest.raises(ValueError, match="leaf_size must be >= 1"):
        KDTree(np.zeros((3, 3)), leaf_size=0)


clouds = arrays(
    np.float64,
    st.tuples(st.integers(1, 60), st.just(3)),
    elements=st.floats(-10, 10, allow_nan=False, width=32),
)


@settings(max_examples=40, deadline=None)
@given(points=clouds, k=st.integers(1, 8), leaf=st.integers(1, 8))
def test_knn_property_matches_brute_force(points, k, leaf):
    k = min(k, len(points))
    queries = points[: min(5, len(points))] + 0.25
    distances, indices = KDTree(points, leaf_size=leaf).query(queries, k)
    ref_d, ref_i = brute_knn(points, queries, k)
    np.testing.assert_allclose(distances, ref_d, atol=1e-9)
    # The returned indices must lie at the returned distances.
    actual = np.linalg.norm(queries[:, None, :] - points[indices], axis=-1)
    np.testing.assert_allclose(actual, distances, atol=1e-9)
