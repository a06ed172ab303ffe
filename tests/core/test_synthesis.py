"""Pseudo-anomaly synthesis, procedural shapes and anchors, against brute-force references."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zal3d_core import shapes
from zal3d_core._kernels import _synthesis as kernels
from zal3d_core.synthesis import (
    CameraModel,
    adding_anomaly,
    fit_camera,
    make_patch,
    random_anchors,
    removing_anomaly,
    select_anchors,
    synthesize_organized,
    synthesize_patches,
)

# ---------------------------------------------------------------------------------
# References and fixtures


def brute_nearest(points, centre, k):
    """Indices of the k nearest points, ties by index."""
    d2 = ((np.asarray(points, np.float64) - centre) ** 2).sum(axis=1)
    return np.lexsort((np.arange(len(points)), d2))[:k]


def flat_grid(n_side, spacing=1.0):
    """Points of an n_side x n_side grid on z = 0, slightly jittered to avoid ties."""
    rng = np.random.default_rng(n_side)
    grid = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2)
    xy = grid * spacing + rng.uniform(-0.1, 0.1, grid.shape) * spacing
    return np.column_stack([xy, np.zeros(len(xy))])


def pinhole_render(height, width, fx, fy, cx, cy, dtype=np.float64):
    """Organized cloud of a smooth depth map seen by a pinhole camera at the origin."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    z = 1.5 + 0.2 * np.sin(0.2 * cols) * np.cos(0.15 * rows)
    xyz = np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=-1)
    return xyz.astype(dtype)


@pytest.fixture
def scan():
    """40 x 40 pinhole render with two holes, about 0.025 units between pixels."""
    xyz = pinhole_render(40, 40, 60.0, 60.0, 19.5, 19.5)
    xyz[0:3, 0:4] = np.nan
    xyz[30:33, 5:9] = np.nan
    return xyz


def pixel_anchor(xyz, row, col):
    assert not np.isnan(xyz[row, col]).any()
    return np.array([row * xyz.shape[1] + col])


def unchanged(new, old):
    """Per-pixel bitwise equality, NaN equal to NaN."""
    same = (new == old) | (np.isnan(new) & np.isnan(old))
    return same.all(axis=-1)


# ---------------------------------------------------------------------------------
# Procedural shapes


def test_sphere_on_surface():
    points = shapes.sample_sphere(2000, radius=2.5, seed=1)
    assert points.shape == (2000, 3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 2.5, rtol=1e-12)


def test_sphere_uniform_hemispheres():
    points = shapes.sample_sphere(20000, seed=2)
    # On a uniform sphere z is uniform on [-1, 1], so half the points have z > 0 and a
    # quarter have z > 0.5.
    assert abs((points[:, 2] > 0).mean() - 0.5) < 0.015
    assert abs((points[:, 2] > 0.5).mean() - 0.25) < 0.015


def test_box_on_surface_and_area_weighted():
    size = np.array([2.0, 1.0, 0.5])
    points = shapes.sample_box(30000, size=size, seed=3)
    relative = np.abs(points) / (size / 2)
    np.testing.assert_allclose(relative.max(axis=1), 1.0, rtol=1e-12)
    assert (relative <= 1.0 + 1e-12).all()
    on_face = np.argmax(relative, axis=1)
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    expected = areas / areas.sum()
    observed = np.bincount(on_face, minlength=3) / len(points)
    np.testing.assert_allclose(observed, expected, atol=0.015)


def test_cylinder_on_surface_and_area_weighted():
    radius, height = 0.5, 2.0
    points = shapes.sample_cylinder(30000, radius=radius, height=height, seed=4)
    rho = np.hypot(points[:, 0], points[:, 1])
    on_side = np.isclose(rho, radius, rtol=1e-12)
    on_cap = np.isclose(np.abs(points[:, 2]), height / 2, rtol=1e-12)
    assert (on_side | on_cap).all()
    assert (rho <= radius * (1 + 1e-12)).all()
    assert (np.abs(points[:, 2]) <= height / 2 * (1 + 1e-12)).all()
    side_share = 2 * np.pi * radius * height / (
        2 * np.pi * radius * height + 2 * np.pi * radius**2
    )
    assert abs(on_side.mean() - side_share) < 0.015


def test_torus_on_surface_and_area_weighted():
    major, minor = 1.0, 0.3
    points = shapes.sample_torus(30000, major_radius=major, minor_radius=minor, seed=5)
    rho = np.hypot(points[:, 0], points[:, 1])
    np.testing.assert_allclose((rho - major) ** 2 + points[:, 2] ** 2, minor**2, rtol=1e-9)
    # The outer half of the tube (rho > major) has area pi*R + 2*r out of 2*pi*R.
    outer_share = (np.pi * major + 2 * minor) / (2 * np.pi * major)
    assert abs((rho > major).mean() - outer_share) < 0.015


def test_blob_radius_bounds():
    points = shapes.sample_blob(5000, radius=2.0, roughness=0.25, seed=6)
    radii = np.linalg.norm(points, axis=1)
    assert radii.min() >= 2.0 * 0.75 - 1e-12
    assert radii.max() <= 2.0 * 1.25 + 1e-12
    # The relief is smooth and not constant: the radius varies across the surface.
    assert radii.std() > 0.01


def test_random_shape_seeded_and_centred():
    first = shapes.sample_random_shape(1500, seed=7)
    again = shapes.sample_random_shape(1500, seed=7)
    other = shapes.sample_random_shape(1500, seed=8)
    assert first.shape == (1500, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize("kind", shapes.SHAPE_KINDS)
def test_random_shape_each_kind(kind):
    points = shapes.sample_random_shape(800, kinds=(kind,), seed=9)
    assert points.shape == (800, 3)
    assert np.isfinite(points).all()
    direct = shapes.sample_shape(kind, 800, seed=9)
    assert direct.shape == (800, 3)


def test_random_rotation_orthonormal():
    rotation = shapes.random_rotation(11)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError, match="kind must be one of sphere, box"):
        shapes.sample_shape("cone", 10)
    with pytest.raises(ValueError, match="minor_radius must be smaller than major"):
        shapes.sample_torus(10, major_radius=0.5, minor_radius=0.5)
    with pytest.raises(ValueError, match=r"roughness must be in \[0, 1\)"):
        shapes.sample_blob(10, roughness=1.0)
    with pytest.raises(ValueError, match="size must be three finite edge lengths"):
        shapes.sample_box(10, size=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="kinds must name at least one"):
        shapes.sample_random_shape(10, kinds=())
    with pytest.raises(ValueError, match="kinds must contain only"):
        shapes.sample_random_shape(10, kinds=("sphere", "cone"))
    with pytest.raises(ValueError, match="n_points must be >= 1"):
        shapes.sample_sphere(0)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        shapes.sample_sphere(10, radius=-1.0)


# ---------------------------------------------------------------------------------
# Removing, unorganized


def test_removing_takes_exactly_k_nearest():
    rng = np.random.default_rng(20)
    points = rng.random((500, 3))
    new_points, removed = removing_anomaly(points, 17, 40)
    expected = np.zeros(500, bool)
    expected[brute_nearest(points, points[17], 40)] = True
    np.testing.assert_array_equal(removed, expected)
    assert new_points.shape == (460, 3)
    np.testing.assert_array_equal(new_points, points[~expected])


def test_removing_keeps_dtype():
    points = np.random.default_rng(21).random((100, 3)).astype(np.float32)
    new_points, _ = removing_anomaly(points, 0, 10)
    assert new_points.dtype == np.float32


def test_removing_fraction_is_compact_subset():
    rng = np.random.default_rng(22)
    points = rng.random((600, 3))
    k, fraction = 50, 0.4
    _, removed = removing_anomaly(points, 5, k, fraction=fraction, seed=3)
    assert removed.sum() == 20
    neighbourhood = brute_nearest(points, points[5], k)
    assert set(np.flatnonzero(removed)) <= set(neighbourhood.tolist())
    # The hole is the 20 neighbours nearest to one of the neighbours.
    holes = []
    for centre in neighbourhood:
        local = neighbourhood[brute_nearest(points[neighbourhood], points[centre], 20)]
        holes.append(set(local.tolist()))
    assert set(np.flatnonzero(removed)) in holes


def test_removing_fraction_seeded():
    points = np.random.default_rng(23).random((400, 3))
    first = removing_anomaly(points, 9, 60, fraction=0.3, seed=4)[1]
    again = removing_anomaly(points, 9, 60, fraction=0.3, seed=4)[1]
    others = [removing_anomaly(points, 9, 60, fraction=0.3, seed=s)[1] for s in range(5, 9)]
    np.testing.assert_array_equal(first, again)
    assert any(not np.array_equal(first, other) for other in others)


def test_removing_errors():
    points = np.random.default_rng(24).random((10, 3))
    with pytest.raises(ValueError, match="k=10 would remove all 10 points"):
        removing_anomaly(points, 0, 10)
    with pytest.raises(ValueError, match=r"anchor_index must be a point index in \[0, 9\]"):
        removing_anomaly(points, 10, 3)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        removing_anomaly(points, 0, 3, fraction=1.5)
    with pytest.raises(ValueError, match="fraction must be a finite number > 0"):
        removing_anomaly(points, 0, 3, fraction=0.0)
    with pytest.raises(TypeError, match="k must be an int"):
        removing_anomaly(points, 0, 2.5)
    bad = points.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="points contains NaN"):
        removing_anomaly(bad, 0, 3)


# ---------------------------------------------------------------------------------
# Adding, unorganized


def test_adding_appends_k_points_near_anchor_along_normal():
    points = flat_grid(20)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    source = shapes.sample_sphere(3000, seed=30)
    anchor, k = 210, 36
    new_points, added = adding_anomaly(
        points, normals, anchor, source, k, offset=(0.2, 0.4), seed=1
    )
    assert new_points.shape == (len(points) + k, 3)
    np.testing.assert_array_equal(new_points[: len(points)], points)
    np.testing.assert_array_equal(added, np.arange(len(points) + k) >= len(points))

    patch = new_points[added]
    neighbourhood = points[brute_nearest(points, points[anchor], k)]
    radius = np.linalg.norm(neighbourhood - points[anchor], axis=1).max()
    centroid = patch.mean(axis=0)
    # The centroid sits on the normal line through the anchor, between 0.2 and 0.4
    # patch radii above it.
    np.testing.assert_allclose(centroid[:2], points[anchor, :2], atol=1e-9)
    assert 0.2 * radius - 1e-9 <= centroid[2] <= 0.4 * radius + 1e-9
    # The RMS radius of the patch matches that of the covered neighbourhood.
    target_rms = np.sqrt(((neighbourhood - points[anchor]) ** 2).sum(axis=1).mean())
    patch_rms = np.sqrt(((patch - centroid) ** 2).sum(axis=1).mean())
    assert patch_rms == pytest.approx(target_rms, rel=1e-9)


def test_adding_cap_bulges_along_normal():
    # A tilted plane with its normal: the spherical cap must face the normal, so its
    # rim lies lower along the normal than its centre.
    points = flat_grid(15)
    tilt = np.deg2rad(30.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]
    )
    points = points @ rotation.T
    normal = rotation @ np.array([0.0, 0.0, 1.0])
    normals = np.tile(normal, (len(points), 1))
    source = shapes.sample_sphere(4000, seed=31)
    new_points, added = adding_anomaly(points, normals, 112, source, 60, spin=False)
    patch = new_points[added] - new_points[added].mean(axis=0)
    height = patch @ normal
    lateral = np.linalg.norm(patch - np.outer(height, normal), axis=1)
    assert np.corrcoef(lateral, height)[0, 1] < -0.9
    _, vectors = np.linalg.eigh(patch.T @ patch)
    assert abs(vectors[:, 0] @ normal) > 0.99


def test_adding_fixed_offset_and_size():
    points = flat_grid(12)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    source = shapes.sample_blob(2000, seed=32)
    new_points, added = adding_anomaly(
        points, normals, 70, source, 20, offset=(0.5, 0.5), size=2.0, seed=2
    )
    distances = np.sort(np.linalg.norm(points - points[70], axis=1))
    radius = distances[19]
    assert new_points[added].mean(axis=0)[2] == pytest.approx(0.5 * 2.0 * radius, rel=1e-9)


def test_adding_seeded():
    points = flat_grid(10)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    source = shapes.sample_torus(2000, seed=33)
    first = adding_anomaly(points, normals, 44, source, 15, seed=5)[0]
    again = adding_anomaly(points, normals, 44, source, 15, seed=5)[0]
    other = adding_anomaly(points, normals, 44, source, 15, seed=6)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_adding_far_from_origin_keeps_precision():
    points = flat_grid(10, spacing=1e-3) + 1e5
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    source = shapes.sample_sphere(2000, seed=34)
    new_points, added = adding_anomaly(points, normals, 55, source, 12, offset=(0.3, 0.3))
    height = new_points[added].mean(axis=0)[2] - points[55, 2]
    radius = np.sort(np.linalg.norm(points - points[55], axis=1))[11]
    assert height == pytest.approx(0.3 * radius, rel=1e-6)


def test_adding_degenerate_sizes():
    points = np.zeros((12, 3))
    points[11] = 1.0
    normals = np.tile([0.0, 0.0, 1.0], (12, 1))
    source = shapes.sample_sphere(100)
    with pytest.raises(ValueError, match="the 5 nearest points of the anchor all coincide"):
        adding_anomaly(points, normals, 0, source, 5)
    flat = flat_grid(4)
    flat_normals = np.tile([0.0, 0.0, 1.0], (16, 1))
    with pytest.raises(ValueError, match="the 5 source points around the source's top "
                       "point all coincide"):
        adding_anomaly(flat, flat_normals, 0, np.ones((20, 3)), 5)
    # A single added point needs no scaling and sits on the normal line.
    new_points, added = adding_anomaly(flat, flat_normals, 5, source, 1, offset=(1.0, 1.0))
    np.testing.assert_allclose(new_points[added][0, :2], flat[5, :2], atol=1e-12)


def test_adding_errors():
    points = flat_grid(6)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    source = shapes.sample_sphere(50)
    with pytest.raises(ValueError, match="source_points must contain at least one point"):
        adding_anomaly(points, normals, 0, np.empty((0, 3)), 5)
    with pytest.raises(ValueError, match="k=60 is larger than the number of points in "
                       "source_points"):
        adding_anomaly(points, normals, 0, source, 60)
    with pytest.raises(ValueError, match="offset must be finite with lo <= hi"):
        adding_anomaly(points, normals, 0, source, 5, offset=(0.5, 0.1))
    with pytest.raises(ValueError, match="offset must be finite with lo <= hi"):
        adding_anomaly(points, normals, 0, source, 5, offset=(0.0, np.inf))
    with pytest.raises(ValueError, match=r"offset must be a pair \(lo, hi\) of real"):
        adding_anomaly(points, normals, 0, source, 5, offset=(0.1, 0.2, 0.3))
    with pytest.raises(TypeError, match=r"offset must be a pair \(lo, hi\) of numbers"):
        adding_anomaly(points, normals, 0, source, 5, offset=0.3)
    zero = normals.copy()
    zero[4] = 0.0
    with pytest.raises(ValueError, match=r"normals\[anchor_index\] must be a finite nonzero"):
        adding_anomaly(points, zero, 4, source, 5)
    with pytest.raises(ValueError, match=r"normals must have shape \(36, 3\)"):
        adding_anomaly(points, normals[:-1], 0, source, 5)
    with pytest.raises(ValueError, match="direction must be a finite nonzero 3-vector"):
        adding_anomaly(points, normals, 0, source, 5, direction=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="size must be a finite number > 0"):
        adding_anomaly(points, normals, 0, source, 5, size=0.0)


# ---------------------------------------------------------------------------------
# Patches


def test_make_patch_nearest_and_centred():
    rng = np.random.default_rng(40)
    points = rng.random((300, 3))
    patch = make_patch(points, 12, 32)
    assert patch.shape == (32, 3)
    assert patch.dtype == np.float32
    expected = points[brute_nearest(points, points[12], 32)] - points[12]
    np.testing.assert_array_equal(patch, expected.astype(np.float32))
    np.testing.assert_array_equal(patch[0], 0.0)


def test_make_patch_pads_with_patch_points():
    points = np.random.default_rng(41).random((5, 3))
    patch = make_patch(points, 2, 12, seed=1)
    assert patch.shape == (12, 3)
    relative = (points - points[2]).astype(np.float32)
    for row in patch:
        assert (relative == row).all(axis=1).any()
    # Every real point appears, and the first rows are the real points nearest first.
    np.testing.assert_array_equal(patch[:5], relative[brute_nearest(points, points[2], 5)])
    np.testing.assert_array_equal(patch, make_patch(points, 2, 12, seed=1))


def test_make_patch_far_from_origin():
    points = flat_grid(8, spacing=1e-3) + np.array([5e5, -3e5, 1e4])
    patch = make_patch(points, 20, 9)
    expected = points[brute_nearest(points, points[20], 9)] - points[20]
    np.testing.assert_allclose(patch, expected, rtol=1e-6, atol=1e-12)


def test_make_patch_errors():
    points = np.random.default_rng(42).random((5, 3))
    with pytest.raises(ValueError, match=r"centre_index must be a point index in \[0, 4\]"):
        make_patch(points, -1, 4)
    with pytest.raises(ValueError, match="n_points must be >= 1"):
        make_patch(points, 0, 0)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        make_patch(points[:, :2], 0, 3)


def plane_with_normals(n_side=16):
    points = flat_grid(n_side)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    return points, normals


def test_synthesize_patches_shapes_and_labels():
    points, normals = plane_with_normals()
    anchors = np.array([40, 100, 170, 200, 33])
    patches, labels = synthesize_patches(points, normals, anchors, n_points=24, seed=1)
    assert patches.shape == (10, 24, 3)
    assert patches.dtype == np.float32
    assert labels.dtype == np.int8
    np.testing.assert_array_equal(labels, [1] * 5 + [0] * 5)


def test_synthesize_removing_patch_is_ring():
    points, _ = plane_with_normals()
    anchors = np.array([120, 77])
    n_points, k = 30, 12
    patches, _ = synthesize_patches(
        points, None, anchors, kind="removing", n_points=n_points, k=k
    )
    for patch, anchor in zip(patches[:2], anchors):
        order = brute_nearest(points, points[anchor], k + n_points)
        expected = points[order[k:]] - points[anchor]
        np.testing.assert_array_equal(patch, expected.astype(np.float32))


def test_synthesize_adding_patch_leaves_plane():
    points, normals = plane_with_normals()
    anchors = np.array([120, 77, 140])
    patches, labels = synthesize_patches(
        points, normals, anchors, kind="adding", n_points=40, k=20, seed=2
    )
    for patch in patches[labels == 1]:
        # The added points rise off the z = 0 plane, and all lie near the anchor.
        assert (np.abs(patch[:, 2]) > 1e-6).sum() >= 10
        assert np.linalg.norm(patch, axis=1).max() < 5.0
    for patch in patches[labels == 0]:
        np.testing.assert_array_equal(patch[:, 2], 0.0)


def test_synthesize_normal_patches_at_anchors_and_elsewhere():
    points, normals = plane_with_normals()
    anchors = np.array([10, 60, 110, 160, 210, 250])
    patches, _ = synthesize_patches(points, normals, anchors, n_points=16, seed=3)
    reference = np.stack(
        [
            (points[brute_nearest(points, points[c], 16)] - points[c]).astype(np.float32)
            for c in range(len(points))
        ]
    )
    at_anchor = 0
    for patch in patches[6:]:
        matches = np.flatnonzero((reference == patch).all(axis=(1, 2)))
        assert len(matches) == 1
        at_anchor += matches[0] in anchors
    assert at_anchor == 3


def test_synthesize_both_alternates_kinds():
    points, normals = plane_with_normals()
    anchors = np.array([50, 120, 180, 90])
    patches, _ = synthesize_patches(points, normals, anchors, n_points=40, k=20, seed=4)
    off_plane = [(np.abs(patch[:, 2]) > 1e-6).any() for patch in patches[:4]]
    assert off_plane == [False, True, False, True]


def test_synthesize_patches_seeded():
    points, normals = plane_with_normals()
    anchors = np.array([50, 120, 180])
    first = synthesize_patches(points, normals, anchors, seed=5)[0]
    again = synthesize_patches(points, normals, anchors, seed=5)[0]
    other = synthesize_patches(points, normals, anchors, seed=6)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_synthesize_patches_user_sources():
    points, normals = plane_with_normals()
    sources = [shapes.sample_box(500, seed=1), shapes.sample_cylinder(600, seed=2)]
    patches, _ = synthesize_patches(
        points, normals, np.array([60, 130]), kind="adding", source=sources, k=16
    )
    assert np.isfinite(patches).all()


def test_synthesize_patches_errors():
    points, normals = plane_with_normals(6)
    with pytest.raises(ValueError, match="kind must be one of 'both', 'adding', 'removing'"):
        synthesize_patches(points, normals, [1], kind="moving")
    with pytest.raises(ValueError, match="normals are needed for kind='adding'"):
        synthesize_patches(points, None, [1], kind="adding")
    with pytest.raises(ValueError, match=r"anchors must be point indices in \[0, 35\]"):
        synthesize_patches(points, normals, [3, 36])
    with pytest.raises(TypeError, match="anchors must contain integer point indices"):
        synthesize_patches(points, normals, [1.0])
    with pytest.raises(ValueError, match="anchors must be a non-empty 1-D array"):
        synthesize_patches(points, normals, np.array([], int))
    with pytest.raises(ValueError, match="k=36 would remove all 36 points"):
        synthesize_patches(points, normals, [2], kind="removing", k=36)
    with pytest.raises(ValueError, match=r"normal_at_anchors must be in \[0, 1\]"):
        synthesize_patches(points, normals, [2], normal_at_anchors=1.5)
    with pytest.raises(ValueError, match="source must contain at least one cloud"):
        synthesize_patches(points, normals, [2], kind="adding", source=[])
    with pytest.raises(ValueError, match=r"k=8 is larger than the number of points in "
                       r"source\[1\]"):
        synthesize_patches(
            points, normals, [2], kind="adding", k=8,
            source=[shapes.sample_sphere(20), shapes.sample_sphere(5)],
        )


# ---------------------------------------------------------------------------------
# Camera fit


def test_fit_camera_recovers_pinhole_intrinsics():
    fx, fy, cx, cy = 410.5, 395.25, 30.7, 22.1
    xyz = pinhole_render(48, 64, fx, fy, cx, cy)
    xyz[10:20, 5:15] = np.nan
    camera = fit_camera(xyz)
    assert camera.kind == "pinhole"
    for fitted, true in [(camera.fx, fx), (camera.fy, fy), (camera.cx, cx), (camera.cy, cy)]:
        assert abs(fitted - true) <= 1e-6 * abs(true)
    assert camera.rms_error < 1e-9


def test_fit_camera_float32_render():
    xyz = pinhole_render(48, 64, 410.5, 395.25, 30.7, 22.1, dtype=np.float32)
    camera = fit_camera(xyz)
    assert camera.fx == pytest.approx(410.5, rel=1e-5)
    assert camera.cy == pytest.approx(22.1, rel=1e-5)


def test_fit_camera_orthographic_on_constant_z():
    rows, cols = np.mgrid[0:10, 0:12].astype(float)
    xyz = np.stack([(cols - 4.0) / 50.0, (rows - 3.0) / 40.0, np.full_like(rows, 0.7)], -1)
    camera = fit_camera(xyz)
    assert camera.kind == "orthographic"
    assert camera.fx == pytest.approx(50.0, rel=1e-9)
    assert camera.fy == pytest.approx(40.0, rel=1e-9)
    assert camera.cx == pytest.approx(4.0, rel=1e-9)
    assert camera.cy == pytest.approx(3.0, rel=1e-9)


def test_fit_camera_orthographic_height_map():
    rows, cols = np.mgrid[0:10, 0:12].astype(float)
    z = 1.0 + 0.3 * np.sin(cols) * np.cos(rows)
    xyz = np.stack([cols / 20.0, rows / 20.0, z], -1)
    camera = fit_camera(xyz)
    assert camera.kind == "orthographic"
    assert camera.rms_error < 1e-9


def test_camera_round_trip():
    camera = CameraModel("pinhole", 300.0, 310.0, 12.5, 9.5)
    rng = np.random.default_rng(50)
    points = rng.uniform([-0.5, -0.5, 0.5], [0.5, 0.5, 2.0], (100, 3))
    u, v, depth = camera.project(points)
    np.testing.assert_allclose(camera.back_project(u, v, depth), points, rtol=1e-12)
    behind = camera.project(np.array([[0.1, 0.1, -1.0]]))
    assert np.isnan(behind[0]).all()


def test_fit_camera_real_kinect_scan(pcl_data):
    from zal3d_core.io import read_organized

    xyz = read_organized(pcl_data / "pairwise" / "capture0001.pcd")
    camera = fit_camera(xyz)
    # PCL's Kinect captures use the default OpenNI intrinsics: f = 525, centre at
    # the middle of the 640 x 480 image.
    assert camera.kind == "pinhole"
    assert camera.fx == pytest.approx(525.0, rel=1e-5)
    assert camera.fy == pytest.approx(525.0, rel=1e-5)
    assert camera.cx == pytest.approx(319.5, rel=1e-5)
    assert camera.cy == pytest.approx(239.5, rel=1e-5)
    assert camera.rms_error < 1e-3


def test_fit_camera_warns_on_poor_fit(caplog):
    rng = np.random.default_rng(51)
    xyz = rng.uniform(0.5, 1.5, (8, 8, 3))
    with caplog.at_level(logging.WARNING, logger="zal3d_core.synthesis"):
        fit_camera(xyz)
    assert "RMS reprojection error" in caplog.text


def test_fit_camera_errors():
    xyz = pinhole_render(6, 6, 50.0, 50.0, 3.0, 3.0)
    one_row = np.full_like(xyz, np.nan)
    one_row[2] = xyz[2]
    with pytest.raises(ValueError, match="at least two rows and two columns"):
        fit_camera(one_row)
    with pytest.raises(ValueError, match="at least 3 valid"):
        fit_camera(np.full((4, 4, 3), np.nan))
    flat_x = xyz.copy()
    flat_x[..., 0] = 0.0
    with pytest.raises(ValueError, match="x or y is constant along the valid pixels"):
        fit_camera(flat_x)
    with pytest.raises(ValueError, match="depth_sign must be"):
        CameraModel("pinhole", 1.0, 1.0, 0.0, 0.0, depth_sign=0.5)
    with pytest.raises(ValueError, match="fx must be finite and nonzero"):
        CameraModel("pinhole", 0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="kind must be 'pinhole' or 'orthographic'"):
        CameraModel("fisheye", 1.0, 1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------
# Organized synthesis


def test_organized_removing_exact_neighbourhood(scan):
    k = 50
    anchor = pixel_anchor(scan, 20, 22)
    new_xyz, mask = synthesize_organized(scan, anchor, kind="removing", k=k)
    valid = ~np.isnan(scan).any(axis=2)
    flat_valid = np.flatnonzero(valid)
    nearest = flat_valid[brute_nearest(scan[valid], scan.reshape(-1, 3)[anchor[0]], k)]
    expected = np.zeros(scan.shape[:2], bool)
    expected.reshape(-1)[nearest] = True
    np.testing.assert_array_equal(mask, expected)
    assert np.isnan(new_xyz[mask]).all()
    assert unchanged(new_xyz, scan)[~mask].all()


def test_organized_removing_several_anchors_fraction(scan):
    anchors = np.concatenate([pixel_anchor(scan, 10, 10), pixel_anchor(scan, 28, 30)])
    new_xyz, mask = synthesize_organized(
        scan, anchors, kind="removing", k=40, fraction=0.5, seed=3
    )
    assert mask.sum() == 40
    assert np.isnan(new_xyz[mask]).all()
    assert unchanged(new_xyz, scan)[~mask].all()


def test_organized_removing_keeps_float32(scan):
    xyz = scan.astype(np.float32)
    new_xyz, _ = synthesize_organized(xyz, pixel_anchor(xyz, 20, 20), kind="removing", k=9)
    assert new_xyz.dtype == np.float32


def test_organized_adding_mask_is_changed_pixels(scan):
    anchors = np.concatenate([pixel_anchor(scan, 20, 20), pixel_anchor(scan, 8, 30)])
    new_xyz, mask = synthesize_organized(scan, anchors, kind="adding", k=60, seed=1)
    np.testing.assert_array_equal(mask, ~unchanged(new_xyz, scan))
    assert mask.sum() > 40


def test_organized_adding_in_front_near_anchor(scan):
    row, col, k = 20, 20, 60
    anchor = pixel_anchor(scan, row, col)
    new_xyz, mask = synthesize_organized(
        scan, anchor, kind="adding", k=k, offset=(0.2, 0.5), seed=2
    )
    was_valid = ~np.isnan(scan).any(axis=2)
    both = mask & was_valid
    assert both.sum() > 20
    # The camera looks along +z, so nearer means smaller z.
    assert (new_xyz[both][:, 2] <= scan[both][:, 2]).all()
    valid = scan[was_valid]
    centre = scan[row, col]
    radius = np.sort(np.linalg.norm(valid - centre, axis=1))[k - 1]
    assert np.linalg.norm(new_xyz[mask] - centre, axis=1).max() < 3.0 * radius
    # Every added point lies on the viewing ray of its pixel centre.
    rows, cols = np.nonzero(mask)
    u, v, _ = fit_camera(scan).project(new_xyz[mask])
    np.testing.assert_allclose(u, cols, atol=1e-6)
    np.testing.assert_allclose(v, rows, atol=1e-6)


def test_organized_adding_dense_footprint(scan):
    anchor = pixel_anchor(scan, 20, 20)
    _, mask = synthesize_organized(scan, anchor, kind="adding", k=80, seed=3)
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # A roughly round patch covers about pi / 4 of its bounding box, and filling
    # leaves no pixel-sized holes inside it.
    assert box.mean() > 0.6
    surrounded = box[:-2, 1:-1] & box[2:, 1:-1] & box[1:-1, :-2] & box[1:-1, 2:]
    assert not (surrounded & ~box[1:-1, 1:-1]).any()


def test_organized_adding_behind_surface_changes_nothing(scan):
    xyz = pinhole_render(40, 40, 60.0, 60.0, 19.5, 19.5)
    anchor = pixel_anchor(xyz, 20, 20)
    new_xyz, mask = synthesize_organized(
        xyz, anchor, kind="adding", k=50, offset=(-3.0, -3.0), seed=4
    )
    assert not mask.any()
    np.testing.assert_array_equal(new_xyz, xyz)


def test_organized_adding_fills_hole_pixels(scan):
    # An anchor beside the hole at rows 30..32, cols 5..8: the bump may cover hole
    # pixels, which then become valid and join the mask.
    anchor = pixel_anchor(scan, 31, 10)
    new_xyz, mask = synthesize_organized(
        scan, anchor, kind="adding", k=60, offset=(0.3, 0.3), seed=5
    )
    was_missing = np.isnan(scan).any(axis=2)
    now_valid = ~np.isnan(new_xyz).any(axis=2)
    assert (mask & was_missing).any()
    np.testing.assert_array_equal(mask & was_missing, was_missing & now_valid)
    assert not (~was_missing & ~now_valid).any()


def test_organized_adding_given_normals_and_camera(scan):
    normals = np.zeros_like(scan)
    normals[..., 2] = -1.0
    camera = fit_camera(scan)
    source = shapes.sample_box(3000, seed=3)
    anchor = pixel_anchor(scan, 15, 25)
    first = synthesize_organized(
        scan, anchor, kind="adding", k=40, normals=normals, camera=camera, source=source
    )
    again = synthesize_organized(
        scan, anchor, kind="adding", k=40, normals=normals, camera=camera, source=source
    )
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[1].any()


def test_organized_seeded(scan):
    anchors = np.concatenate([pixel_anchor(scan, 20, 20), pixel_anchor(scan, 8, 30)])
    first = synthesize_organized(scan, anchors, kind="adding", k=40, seed=7)[0]
    again = synthesize_organized(scan, anchors, kind="adding", k=40, seed=7)[0]
    other = synthesize_organized(scan, anchors, kind="adding", k=40, seed=8)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other, equal_nan=True)


def test_organized_adding_on_real_scan(pcl_data):
    from zal3d_core.io import read_organized

    xyz = read_organized(pcl_data / "pairwise" / "capture0001.pcd")[200:280, 260:360]
    valid = ~np.isnan(xyz).any(axis=2)
    anchors = random_anchors(valid, 3, seed=1)
    new_xyz, mask = synthesize_organized(xyz, anchors, kind="adding", k=150, seed=1)
    assert new_xyz.dtype == np.float32
    np.testing.assert_array_equal(mask, ~unchanged(new_xyz, xyz))
    assert mask.sum() > 150
    both = mask & valid
    assert (new_xyz[both][:, 2] <= xyz[both][:, 2]).all()


def test_organized_errors(scan):
    anchor = pixel_anchor(scan, 20, 20)
    with pytest.raises(ValueError, match="kind must be one of 'adding', 'removing'"):
        synthesize_organized(scan, anchor, kind="both")
    with pytest.raises(ValueError, match=r"anchors must be valid pixels.*\(row, col\) \(0, 0\)"):
        synthesize_organized(scan, [0], kind="removing", k=5)
    with pytest.raises(ValueError, match=r"anchors must be flat pixel indices in \[0, 1599\]"):
        synthesize_organized(scan, [1600], kind="removing", k=5)
    with pytest.raises(ValueError, match="anchors must be a non-empty 1-D array of flat"):
        synthesize_organized(scan, np.array([], int), kind="removing", k=5)
    with pytest.raises(TypeError, match="anchors must contain integer flat pixel indices"):
        synthesize_organized(scan, [820.0], kind="removing", k=5)
    n_valid = int((~np.isnan(scan).any(axis=2)).sum())
    with pytest.raises(ValueError, match=f"k=2000 is larger than the number of valid "
                       f"points in xyz \\({n_valid}\\)"):
        synthesize_organized(scan, anchor, kind="removing", k=2000)
    with pytest.raises(ValueError, match="source must contain at least one point"):
        synthesize_organized(scan, anchor, kind="adding", k=5, source=np.empty((0, 3)))
    with pytest.raises(ValueError, match="k=50 is larger than the number of points in source"):
        synthesize_organized(scan, anchor, kind="adding", k=50, source=shapes.sample_sphere(20))
    with pytest.raises(ValueError, match="offset must be finite with lo <= hi"):
        synthesize_organized(scan, anchor, kind="adding", k=5, offset=(1.0, 0.0))
    with pytest.raises(TypeError, match="camera must be a CameraModel or None"):
        synthesize_organized(scan, anchor, kind="adding", k=5, camera="pinhole")
    with pytest.raises(ValueError, match=r"normals must have shape \(40, 40, 3\)"):
        synthesize_organized(scan, anchor, kind="adding", k=5, normals=np.ones((40, 3)))
    with pytest.raises(ValueError, match="fill_radius must be >= 1"):
        synthesize_organized(scan, anchor, kind="adding", k=5, fill_radius=0)
    with pytest.raises(ValueError, match=r"xyz must have shape \(H, W, 3\)"):
        synthesize_organized(scan[..., :2], anchor, kind="removing", k=5)
    zero_normals = np.zeros_like(scan)
    with pytest.raises(ValueError, match=r"normals\[20, 20\] must be a finite nonzero"):
        synthesize_organized(scan, anchor, kind="adding", k=5, normals=zero_normals)


def test_organized_normal_needs_three_points():
    xyz = np.full((3, 3, 3), np.nan)
    xyz[0, 0] = (0.0, 0.0, 1.0)
    xyz[2, 2] = (0.1, 0.1, 1.0)
    camera = CameraModel("pinhole", 20.0, 20.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="anchor's normal needs at least 3 valid points"):
        synthesize_organized(xyz, [0], kind="adding", k=2, camera=camera)


@st.composite
def organized_clouds(draw):
    height = draw(st.integers(6, 14))
    width = draw(st.integers(6, 14))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    z = 1.0 + 0.3 * rng.random() * np.sin(rng.uniform(0.1, 1.0) * cols + rows)
    xyz = np.stack([(cols - width / 2) * z / 30.0, (rows - height / 2) * z / 30.0, z], -1)
    holes = rng.random((height, width)) < draw(st.floats(0.0, 0.3))
    xyz[holes] = np.nan
    if draw(st.booleans()):
        xyz = xyz.astype(np.float32)
    return xyz, seed


@settings(max_examples=25, deadline=None)
@given(organized_clouds(), st.sampled_from(["adding", "removing"]), st.integers(1, 30))
def test_organized_property_finite_and_masked(cloud, kind, k):
    xyz, seed = cloud
    valid = ~np.isnan(xyz).any(axis=2)
    if valid.sum() < 6 or np.unique(np.nonzero(valid)[0]).size < 2:
        return
    if np.unique(np.nonzero(valid)[1]).size < 2:
        return
    k = min(k, int(valid.sum()))
    anchors = random_anchors(valid, min(2, int(valid.sum())), seed=seed)
    new_xyz, mask = synthesize_organized(xyz, anchors, kind=kind, k=k, seed=seed)
    assert new_xyz.shape == xyz.shape
    assert new_xyz.dtype == xyz.dtype
    # A pixel is either a full point or missing in all three coordinates.
    missing = np.isnan(new_xyz)
    assert (missing.all(axis=2) == missing.any(axis=2)).all()
    assert np.isfinite(new_xyz[~missing.any(axis=2)]).all()
    assert unchanged(new_xyz, xyz)[~mask].all()
    assert not unchanged(new_xyz, xyz)[mask].any()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(5, 80), st.sampled_from(["both", "adding"]))
def test_patches_property_finite(seed, n_points, kind):
    rng = np.random.default_rng(seed)
    # At least 2 * (n_points // 2) + 1 points, so that "removing" leaves some.
    points = rng.random((int(rng.integers(81, 140)), 3))
    normals = rng.standard_normal(points.shape)
    anchors = rng.choice(len(points), size=3, replace=False)
    patches, labels = synthesize_patches(
        points, normals, anchors, kind=kind, n_points=n_points, seed=seed
    )
    assert patches.shape == (6, n_points, 3)
    assert np.isfinite(patches).all()
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------------
# Kernels


def test_splat_depth_nearest_wins():
    u = np.array([1.0, 1.2, 3.4, 10.0, 2.5, np.nan])
    v = np.array([2.0, 1.9, 0.6, 1.0, 0.5, 1.0])
    depth = np.array([5.0, 4.0, 1.0, 1.0, 2.0, 1.0])
    buffer = kernels.splat_depth(u, v, depth, 3, 4)
    expected = np.full((3, 4), np.inf)
    expected[2, 1] = 4.0
    expected[1, 3] = 1.0
    # u = 2.5, v = 0.5 rounds half up to pixel (1, 3), where depth 1.0 is nearer, and
    # u = 10 lies outside the image.
    np.testing.assert_array_equal(buffer, expected)


def test_fill_depth_gaps_inside_only():
    buffer = np.full((7, 7), np.inf)
    buffer[1:6, 1:6] = 2.0
    buffer[3, 3] = np.inf
    buffer[2, 4] = np.inf
    buffer[1, 3] = np.inf
    filled = kernels.fill_depth_gaps(buffer, 1, 3)
    assert filled[3, 3] == pytest.approx(2.0)
    assert filled[2, 4] == pytest.approx(2.0)
    # A gap in the top edge has drawn pixels in 3 quadrants (left, right, below).
    assert filled[1, 3] == pytest.approx(2.0)
    assert np.isinf(kernels.fill_depth_gaps(buffer, 1, 4)[1, 3])
    # Pixels outside the square's edges see at most two quadrants.
    assert np.isinf(filled[0, :]).all()
    assert np.isinf(filled[:, 6]).all()


def test_fill_depth_gaps_weighted_mean():
    buffer = np.full((3, 3), np.inf)
    buffer[0, 1], buffer[1, 0], buffer[2, 2] = 1.0, 2.0, 4.0
    filled = kernels.fill_depth_gaps(buffer, 1, 3)
    weights = np.array([1.0, 1.0, 0.5])
    expected = (weights * [1.0, 2.0, 4.0]).sum() / weights.sum()
    assert filled[1, 1] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------
# Anchors


def brute_select(scores, valid, n, min_distance):
    height, width = scores.shape
    flat = [i for i in range(height * width) if valid.reshape(-1)[i]]
    flat.sort(key=lambda i: (-scores.reshape(-1)[i], i))
    taken = []
    for i in flat:
        r, c = divmod(i, width)
        if all((r - t // width) ** 2 + (c - t % width) ** 2 >= min_distance**2 for t in taken):
            taken.append(i)
        if len(taken) == n:
            break
    return taken


def test_select_anchors_matches_greedy_reference():
    rng = np.random.default_rng(60)
    scores = rng.random((30, 40))
    valid = rng.random((30, 40)) < 0.7
    anchors = select_anchors(scores, valid, 12, min_distance=4.5)
    assert anchors.tolist() == brute_select(scores, valid, 12, 4.5)
    rows, cols = np.divmod(anchors, 40)
    gaps = np.hypot(rows[:, None] - rows, cols[:, None] - cols)
    assert gaps[~np.eye(12, dtype=bool)].min() >= 4.5


def test_select_anchors_ties_by_index():
    scores = np.ones((4, 6))
    anchors = select_anchors(scores, np.ones((4, 6), bool), 3, min_distance=0)
    assert anchors.tolist() == [0, 1, 2]


def test_select_anchors_skips_nan_and_invalid():
    scores = np.arange(25, dtype=float).reshape(5, 5)
    scores[4, 4] = np.nan
    valid = np.ones((5, 5), bool)
    valid[4, 3] = False
    anchors = select_anchors(scores, valid, 2, min_distance=0)
    assert anchors.tolist() == [22, 21]


def test_select_anchors_default_spacing():
    rng = np.random.default_rng(61)
    scores = rng.random((40, 40))
    valid = np.ones((40, 40), bool)
    anchors = select_anchors(scores, valid, 16)
    assert anchors.tolist() == brute_select(scores, valid, 16, 0.5 * np.sqrt(1600 / 16))


def test_select_anchors_warns_when_crowded(caplog):
    scores = np.random.default_rng(62).random((5, 5))
    with caplog.at_level(logging.WARNING, logger="zal3d_core.synthesis"):
        anchors = select_anchors(scores, np.ones((5, 5), bool), 10, min_distance=4)
    assert len(anchors) < 10
    assert "found room for only" in caplog.text


def test_select_anchors_jitter_seeded():
    scores = np.random.default_rng(63).random((30, 30))
    valid = np.ones((30, 30), bool)
    plain = select_anchors(scores, valid, 8, min_distance=3)
    first = select_anchors(scores, valid, 8, min_distance=3, jitter=1.0, seed=1)
    again = select_anchors(scores, valid, 8, min_distance=3, jitter=1.0, seed=1)
    other = select_anchors(scores, valid, 8, min_distance=3, jitter=1.0, seed=2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, plain)


def test_select_anchors_errors():
    scores = np.zeros((4, 4))
    valid = np.ones((4, 4), bool)
    with pytest.raises(TypeError, match="valid must be a bool array"):
        select_anchors(scores, valid.astype(int), 2)
    with pytest.raises(ValueError, match=r"valid must have shape \(4, 4\)"):
        select_anchors(scores, np.ones((4, 5), bool), 2)
    with pytest.raises(ValueError, match=r"score_map must have shape \(H, W\)"):
        select_anchors(np.zeros(16), valid, 2)
    bad = scores.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="score_map contains 1 infinite values"):
        select_anchors(bad, valid, 2)
    with pytest.raises(ValueError, match="n_anchors=17 is larger than the number of valid"):
        select_anchors(scores, valid, 17)
    with pytest.raises(ValueError, match="min_distance must be a finite number >= 0"):
        select_anchors(scores, valid, 2, min_distance=-1)
    with pytest.raises(ValueError, match="jitter must be a finite number >= 0"):
        select_anchors(scores, valid, 2, jitter=-0.5)


def test_random_anchors_distinct_valid_seeded():
    valid = np.random.default_rng(64).random((20, 20)) < 0.5
    anchors = random_anchors(valid, 30, seed=3)
    assert len(set(anchors.tolist())) == 30
    assert valid.reshape(-1)[anchors].all()
    np.testing.assert_array_equal(anchors, random_anchors(valid, 30, seed=3))
    assert not np.array_equal(anchors, random_anchors(valid, 30, seed=4))


def test_random_anchors_errors():
    valid = np.zeros((3, 3), bool)
    valid[0, 0] = True
    with pytest.raises(ValueError, match="n_anchors=2 is larger than the number of valid "
                       r"pixels \(1\)"):
        random_anchors(valid, 2)
    with pytest.raises(TypeError, match="valid must be a bool array"):
        random_anchors(np.ones((3, 3)), 1)
