"""Random clouds through the whole feature pipeline.

Hypothesis draws organized and unorganized clouds with NaN rows and pixels, repeated
points, tiny sizes, offsets of 5e5 (UTM metres), scales from 1e-6 to 1e6, float32 and
float64, and lines and planes. Each step may reject its input with ValueError or
TypeError. Any other exception fails the test, and so does any NaN or inf in the
normals, features or scores of valid points.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zal3d_core import (
    anomaly_map,
    compute_fpfh,
    compute_fpfh_organized,
    estimate_normals,
    estimate_normals_organized,
    farthest_point_sampling,
    flatten_organized,
    image_score,
    median_point_spacing,
    nearest_neighbor_scores,
    pool_patch_features,
    remove_background,
    resize_organized,
)

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SHAPES = ("surface", "noise", "plane", "line", "constant", "two values")


def documented(function, *args, **kwargs):
    """Call ``function``, or return None if it raises ValueError or TypeError."""
    try:
        return function(*args, **kwargs)
    except (ValueError, TypeError):
        return None


def make_points(rng, n, shape, scale, offset, dtype, nan_share, duplicate_share):
    """Return an (n, 3) cloud of the given kind with NaN rows and repeated rows."""
    u = rng.uniform(-1.0, 1.0, n)
    v = rng.uniform(-1.0, 1.0, n)
    if shape == "surface":
        points = np.column_stack([u, v, 0.2 * np.sin(3 * u) * np.cos(2 * v)])
    elif shape == "noise":
        points = rng.uniform(-1.0, 1.0, (n, 3))
    elif shape == "plane":
        points = np.column_stack([u, v, 0.3 * u - 0.1 * v])
    elif shape == "line":
        points = np.outer(u, [1.0, 2.0, -0.5])
    elif shape == "constant":
        points = np.tile([0.25, -0.5, 1.0], (n, 1))
    else:
        points = np.where(rng.random((n, 1)) < 0.5, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    points = points * scale
    points[:, :2] += offset
    if n:
        repeats = rng.random(n) < duplicate_share
        points[repeats] = points[rng.integers(0, n, int(repeats.sum()))]
        points[rng.random(n) < nan_share] = np.nan
    return points.astype(dtype)


@st.composite
def clouds(draw, organized: bool):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if organized:
        height = draw(st.integers(1, 10))
        width = draw(st.integers(1, 10))
        n = height * width
    else:
        n = draw(st.integers(0, 40))
    points = make_points(
        rng,
        n,
        draw(st.sampled_from(SHAPES)),
        draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6])),
        draw(st.sampled_from([0.0, 5e5])),
        draw(st.sampled_from([np.float32, np.float64])),
        draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        draw(st.sampled_from([0.0, 0.3])),
    )
    if organized:
        return points.reshape(height, width, 3)
    return points


def radii(cloud, factor):
    """Search radii from the point spacing, or from the extent when there is none."""
    spacing = documented(median_point_spacing, cloud)
    if spacing is None:
        finite = cloud[~np.isnan(cloud).any(axis=-1)].astype(np.float64)
        spacing = float(np.ptp(finite, axis=0).max()) if finite.size else 1.0
    spacing = spacing if spacing > 0 else 1.0
    return factor * spacing, 2 * factor * spacing


def check_normals(normals, valid):
    assert np.isfinite(normals[valid]).all()
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=1e-5)
    assert np.isnan(normals[~valid]).all()


def check_features(features, valid):
    assert np.isfinite(features).all()
    assert (features >= 0).all()
    assert (features[~valid] == 0).all()
    sums = features[valid].reshape(-1, 3, 11).sum(axis=-1)
    assert (
        np.abs(sums[..., None] - np.array([0.0, 100.0, 200.0])).min(axis=-1) < 1e-2
    ).all()


@FUZZ
@given(
    cloud=clouds(organized=False),
    factor=st.sampled_from([0.5, 2.0, 10.0]),
    max_nn=st.integers(1, 40),
)
def test_unorganized_pipeline(cloud, factor, max_nn):
    valid = ~np.isnan(cloud).any(axis=1)
    normal_radius, fpfh_radius = radii(cloud, factor)
    normals = documented(estimate_normals, cloud, normal_radius, max_nn)
    if normals is None:
        assert not valid.any()
        return
    check_normals(normals, valid)
    features = compute_fpfh(cloud, normals, fpfh_radius, 2 * max_nn)
    check_features(features, valid)

    picks = farthest_point_sampling(cloud[valid], min(5, int(valid.sum())))
    assert len(set(picks.tolist())) == len(picks)
    scores = nearest_neighbor_scores(features[valid], features[valid][picks])
    assert np.isfinite(scores).all()
    assert (scores >= 0).all()


@FUZZ
@given(
    cloud=clouds(organized=True),
    factor=st.sampled_from([1.0, 3.0]),
    max_nn=st.integers(3, 30),
    search=st.sampled_from(["window", "tree"]),
)
def test_organized_pipeline(cloud, factor, max_nn, search):
    valid = ~np.isnan(cloud).any(axis=2)
    points, flat_index = flatten_organized(cloud)
    assert points.shape[0] == int(valid.sum())
    assert (flat_index == np.flatnonzero(valid)).all()
    normal_radius, fpfh_radius = radii(cloud, factor)
    normals = documented(
        estimate_normals_organized, cloud, normal_radius, max_nn, search=search
    )
    if normals is None:
        assert not valid.any()
        return
    check_normals(normals, valid)
    features = compute_fpfh_organized(
        cloud, normals, fpfh_radius, 3 * max_nn, search=search
    )
    check_features(features, valid)

    grid = (min(2, cloud.shape[0]), min(2, cloud.shape[1]))
    pooled, patch_valid = pool_patch_features(features, valid, grid=grid, kernel=1)
    assert np.isfinite(pooled).all()
    bank = pooled[patch_valid]
    scores = np.full(len(pooled), np.nan)
    scores[patch_valid] = nearest_neighbor_scores(bank, bank)
    assert (scores[patch_valid] == 0).all()
    result = anomaly_map(scores, grid, cloud.shape[:2], valid, sigma=1.0)
    assert np.isfinite(result[valid]).all()
    assert np.isnan(result[~valid]).all()
    assert np.isfinite(image_score(result))


@FUZZ
@given(cloud=clouds(organized=True), size=st.integers(1, 12), border=st.integers(1, 3))
def test_organized_preprocessing(cloud, size, border):
    resized = resize_organized(cloud, size)
    assert resized.shape == (size, size, 3)
    assert not np.isinf(resized).any()
    # Nearest-neighbour resizing keeps a pixel either whole or missing.
    assert (np.isnan(resized).all(axis=2) == np.isnan(resized).any(axis=2)).all()
    removed = documented(remove_background, cloud, border=border)
    if removed is not None:
        assert removed.shape == cloud.shape
        remaining = ~np.isnan(removed).any(axis=2)
        assert (remaining <= ~np.isnan(cloud).any(axis=2)).all()
        np.testing.assert_array_equal(removed[remaining], cloud[remaining])
