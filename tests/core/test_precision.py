"""Clouds far from the origin give the features of the same cloud near it.

The geometry code subtracts the bounding-box centre in float64 before any float32
arithmetic, so an offset of 5e5 in x and y (UTM metres) changes nothing beyond the
rounding of the input itself:

- float64 input: normals within 1e-6 per component and FPFH within 1e-3 per bin of the
  cloud centred at the origin.
- float32 input: a float32 coordinate near 5e5 is a multiple of 2**-5 (3.1 cm), so the
  points themselves move by up to 1.6 cm. The results equal, to the same tight
  tolerance, those of the float64 pipeline on the rounded points. On a 1 m grid
  (terrain scans in UTM) the normals stay within 3 degrees of the unrounded cloud's,
  where 1.97 degrees was measured on this surface. On a 1 mm grid float32 at 5e5
  cannot hold the surface at all, so such clouds must be passed as float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from zal3d_core import (
    FPFHBackend,
    compute_fpfh,
    compute_fpfh_organized,
    estimate_normals,
    estimate_normals_organized,
)

OFFSET = np.array([5e5, 5e5, 0.0])
NORMAL_ATOL = 1e-6
FPFH_ATOL = 1e-3


def surface(spacing: float, size: int = 40, seed: int = 0) -> np.ndarray:
    """A wavy organized surface centred at the origin, with jittered pixels and holes.

    The jitter keeps neighbours off the exact search radius, where the rounding of an
    offset could move a point in or out of a neighbourhood.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    x = (cols - size / 2 + 0.2 * rng.random((size, size))) * spacing
    y = (rows - size / 2 + 0.2 * rng.random((size, size))) * spacing
    z = spacing * (
        3 * np.sin(cols / 6)
        + 2 * np.cos(rows / 5)
        + 0.05 * rng.standard_normal((size, size))
    )
    xyz = np.stack([x, y, z], -1)
    xyz[rng.random((size, size)) < 0.05] = np.nan
    return xyz


def angles_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between unit vectors, accurate near 0 (unlike arccos of the dot)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, (a * b).sum(axis=-1)))


def viewpoint(spacing: float, offset: np.ndarray | None = None) -> np.ndarray:
    """A camera 10 spacings above the surface, moved by ``offset`` with the cloud."""
    camera = np.array([0.0, 0.0, 10.0 * spacing])
    return camera if offset is None else camera + offset


@pytest.mark.parametrize("spacing", [1e-3, 1.0])
def test_unorganized_float64_offset(spacing):
    xyz = surface(spacing)
    points = xyz.reshape(-1, 3)
    points = points[~np.isnan(points).any(axis=1)]
    far = points + OFFSET
    near_normals = estimate_normals(points, 4.5 * spacing, 30, viewpoint(spacing))
    far_normals = estimate_normals(far, 4.5 * spacing, 30, viewpoint(spacing, OFFSET))
    np.testing.assert_allclose(far_normals, near_normals, atol=NORMAL_ATOL)
    np.testing.assert_allclose(
        compute_fpfh(far, far_normals, 8.5 * spacing, 100),
        compute_fpfh(points, near_normals, 8.5 * spacing, 100),
        atol=FPFH_ATOL,
    )


@pytest.mark.parametrize("search", ["window", "tree"])
@pytest.mark.parametrize("spacing", [1e-3, 1.0])
def test_organized_float64_offset(spacing, search):
    xyz = surface(spacing)
    far = xyz + OFFSET
    near_normals = estimate_normals_organized(
        xyz, 4.5 * spacing, 30, viewpoint(spacing), search=search
    )
    far_normals = estimate_normals_organized(
        far, 4.5 * spacing, 30, viewpoint(spacing, OFFSET), search=search
    )
    valid = ~np.isnan(xyz).any(axis=2)
    np.testing.assert_allclose(
        far_normals[valid], near_normals[valid], atol=NORMAL_ATOL
    )
    np.testing.assert_allclose(
        compute_fpfh_organized(far, far_normals, 8.5 * spacing, 100, search=search),
        compute_fpfh_organized(xyz, near_normals, 8.5 * spacing, 100, search=search),
        atol=FPFH_ATOL,
    )


@pytest.mark.parametrize("search", ["window", "tree"])
def test_backend_float64_offset(search):
    spacing = 1e-3
    xyz = surface(spacing)
    near = FPFHBackend(search=search, grid=8, viewpoint=viewpoint(spacing)).extract(xyz)
    far = FPFHBackend(
        search=search, grid=8, viewpoint=viewpoint(spacing, OFFSET)
    ).extract(xyz + OFFSET)
    np.testing.assert_array_equal(far.patch_valid, near.patch_valid)
    np.testing.assert_allclose(far.features, near.features, atol=FPFH_ATOL)


@pytest.mark.parametrize("spacing", [1e-3, 1.0])
def test_float32_offset_adds_no_error_beyond_input_rounding(spacing):
    xyz = surface(spacing)
    far32 = (xyz + OFFSET).astype(np.float32)
    # The same rounded points, moved back to the origin exactly in float64.
    rounded = far32.astype(np.float64) - OFFSET
    for search in ("window", "tree"):
        reference = estimate_normals_organized(
            rounded, 4.5 * spacing, 30, viewpoint(spacing), search=search
        )
        normals = estimate_normals_organized(
            far32, 4.5 * spacing, 30, viewpoint(spacing, OFFSET), search=search
        )
        valid = ~np.isnan(xyz).any(axis=2)
        np.testing.assert_allclose(normals[valid], reference[valid], atol=NORMAL_ATOL)
        np.testing.assert_allclose(
            compute_fpfh_organized(far32, normals, 8.5 * spacing, 100, search=search),
            compute_fpfh_organized(
                rounded, reference, 8.5 * spacing, 100, search=search
            ),
            atol=FPFH_ATOL,
        )
    near = FPFHBackend(grid=8, viewpoint=viewpoint(spacing)).extract(rounded)
    far = FPFHBackend(grid=8, viewpoint=viewpoint(spacing, OFFSET)).extract(far32)
    np.testing.assert_allclose(far.features, near.features, atol=FPFH_ATOL)


def test_float32_offset_on_a_metre_grid():
    spacing = 1.0
    xyz = surface(spacing)
    valid = ~np.isnan(xyz).any(axis=2)
    exact = estimate_normals_organized(xyz, 4.5 * spacing, 30, viewpoint(spacing))
    far32 = (xyz + OFFSET).astype(np.float32)
    assert np.abs(far32.astype(np.float64) - OFFSET - xyz)[valid].max() <= 2.0**-6
    normals = estimate_normals_organized(
        far32, 4.5 * spacing, 30, viewpoint(spacing, OFFSET)
    )
    assert angles_degrees(normals[valid], exact[valid]).max() < 3.0


def test_float32_near_origin_matches_float64():
    spacing = 1e-3
    xyz = surface(spacing)
    valid = ~np.isnan(xyz).any(axis=2)
    xyz32 = xyz.astype(np.float32)
    reference = estimate_normals_organized(xyz32.astype(np.float64), 4.5 * spacing, 30)
    normals = estimate_normals_organized(xyz32, 4.5 * spacing, 30)
    np.testing.assert_array_equal(normals[valid], reference[valid])
    assert (
        angles_degrees(
            normals[valid], estimate_normals_organized(xyz, 4.5 * spacing, 30)[valid]
        ).max()
        < 1e-3
    )
