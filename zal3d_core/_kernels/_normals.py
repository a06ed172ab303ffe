"""Normal and curvature kernels: PCA of each point's neighbourhood, given as CSR rows.

The covariance of a neighbourhood is accumulated in float64 on offsets from the query
point, so the subtraction of the mean cancels at the scale of the neighbourhood and not
at the scale of the coordinates. The normal is the eigenvector of the smallest
eigenvalue of that 3 x 3 matrix, found in closed form.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .._numba import jit

BLOCK = 64

# Covariance entries below this come from points within about 1e-145 of each other,
# where float64 products near the subnormal range keep too few bits for a direction.
# Dividing by such a scale could also overflow under fast-math reciprocals, so these
# neighbourhoods count as coinciding points (the FPFH kernel uses the same bound).
TINY_COVARIANCE = 1e-290


@jit
def _cross_norm2(ax, ay, az, bx, by, bz):
    cx = ay * bz - az * by
    cy = az * bx - ax * bz
    cz = ax * by - ay * bx
    return cx, cy, cz, cx * cx + cy * cy + cz * cz


@jit
def _orthogonal_unit(x, y, z):
    """Return a unit vector orthogonal to the nonzero vector (x, y, z)."""
    ax = abs(x)
    ay = abs(y)
    az = abs(z)
    # Cross with the axis least aligned with the vector, which is never parallel to it.
    if ax <= ay and ax <= az:
        cx, cy, cz = 0.0, -z, y
    elif ay <= az:
        cx, cy, cz = z, 0.0, -x
    else:
        cx, cy, cz = -y, x, 0.0
    norm = math.sqrt(cx * cx + cy * cy + cz * cz)
    return cx / norm, cy / norm, cz / norm


@jit
def smallest_eigenvector(c00, c01, c02, c11, c12, c22):
    """Return ``(x, y, z, eigenvalue, ok)`` for the smallest eigenvalue of a symmetric
    3 x 3 matrix.

    The eigenvalue comes from the trigonometric solution of the characteristic cubic.
    The eigenvector is the largest cross product of two rows of ``C - eigenvalue * I``.
    When the smallest eigenvalue is double, any unit vector orthogonal to the remaining
    row is returned. ``ok`` is False for the zero matrix, which has no direction, and
    for entries below ``TINY_COVARIANCE``.
    """
    scale = max(abs(c00), abs(c01), abs(c02), abs(c11), abs(c12), abs(c22))
    if scale < TINY_COVARIANCE:
        return 0.0, 0.0, 1.0, 0.0, False
    a00 = c00 / scale
    a01 = c01 / scale
    a02 = c02 / scale
    a11 = c11 / scale
    a12 = c12 / scale
    a22 = c22 / scale

    q = (a00 + a11 + a22) / 3.0
    b00 = a00 - q
    b11 = a11 - q
    b22 = a22 - q
    off = a01 * a01 + a02 * a02 + a12 * a12
    p2 = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off
    if p2 == 0.0:
        # A multiple of the identity: every direction is an eigenvector.
        return 0.0, 0.0, 1.0, q * scale, True
    p = math.sqrt(p2 / 6.0)
    det = (
        b00 * (b11 * b22 - a12 * a12)
        - a01 * (a01 * b22 - a12 * a02)
        + a02 * (a01 * a12 - b11 * a02)
    )
    r = det / (2.0 * p * p * p)
    r = min(1.0, max(-1.0, r))
    phi = math.acos(r) / 3.0
    eigenvalue = q + 2.0 * p * math.cos(phi + 2.0 * math.pi / 3.0)

    m00 = a00 - eigenvalue
    m11 = a11 - eigenvalue
    m22 = a22 - eigenvalue
    x0, y0, z0, n0 = _cross_norm2(m00, a01, a02, a01, m11, a12)
    x1, y1, z1, n1 = _cross_norm2(m00, a01, a02, a02, a12, m22)
    x2, y2, z2, n2 = _cross_norm2(a01, m11, a12, a02, a12, m22)
    if n0 >= n1 and n0 >= n2:
        best, x, y, z = n0, x0, y0, z0
    elif n1 >= n2:
        best, x, y, z = n1, x1, y1, z1
    else:
        best, x, y, z = n2, x2, y2, z2
    if best > 0.0:
        norm = math.sqrt(best)
        return x / norm, y / norm, z / norm, eigenvalue * scale, True

    # Rank one: the eigenvector is any direction orthogonal to the largest row.
    r0 = m00 * m00 + a01 * a01 + a02 * a02
    r1 = a01 * a01 + m11 * m11 + a12 * a12
    r2 = a02 * a02 + a12 * a12 + m22 * m22
    if r0 >= r1 and r0 >= r2:
        x, y, z = _orthogonal_unit(m00, a01, a02)
    elif r1 >= r2:
        x, y, z = _orthogonal_unit(a01, m11, a12)
    else:
        x, y, z = _orthogonal_unit(a02, a12, m22)
    return x, y, z, eigenvalue * scale, True


@jit(parallel=True)
def normals_from_neighbours(points, indptr, indices, viewpoint, normals, curvature):
    """Estimate the normal and curvature of each point from its CSR neighbour row.

    ``points`` (n, 3) float64 and ``viewpoint`` (3,) are in the same centred frame.
    A row with no entry is a missing point and gets NaN. A row with fewer than 3
    entries, or whose points all coincide (to within about 1e-145), gets the normal
    (0, 0, 1), unoriented, and curvature 0. Other normals are flipped so that
    ``dot(n, viewpoint - p) >= 0``.
    Curvature is the smallest eigenvalue over the sum of eigenvalues, with the smallest
    eigenvalue taken as the Rayleigh quotient of the normal, which stays accurate when
    it is tiny next to the others.
    """
    n = points.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for block in prange(n_blocks):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            start = indptr[i]
            count = indptr[i + 1] - start
            if count == 0:
                normals[i, 0] = np.nan
                normals[i, 1] = np.nan
                normals[i, 2] = np.nan
                curvature[i] = np.nan
                continue
            if count < 3:
                normals[i, 0] = 0.0
                normals[i, 1] = 0.0
                normals[i, 2] = 1.0
                curvature[i] = 0.0
                continue

            px = points[i, 0]
            py = points[i, 1]
            pz = points[i, 2]
            sx = 0.0
            sy = 0.0
            sz = 0.0
            sxx = 0.0
            sxy = 0.0
            sxz = 0.0
            syy = 0.0
            syz = 0.0
            szz = 0.0
            for e in range(start, start + count):
                j = indices[e]
                dx = points[j, 0] - px
                dy = points[j, 1] - py
                dz = points[j, 2] - pz
                sx += dx
                sy += dy
                sz += dz
                sxx += dx * dx
                sxy += dx * dy
                sxz += dx * dz
                syy += dy * dy
                syz += dy * dz
                szz += dz * dz
            inv = 1.0 / count
            mx = sx * inv
            my = sy * inv
            mz = sz * inv
            c00 = sxx * inv - mx * mx
            c01 = sxy * inv - mx * my
            c02 = sxz * inv - mx * mz
            c11 = syy * inv - my * my
            c12 = syz * inv - my * mz
            c22 = szz * inv - mz * mz

            x, y, z, _, ok = smallest_eigenvector(c00, c01, c02, c11, c12, c22)
            if not ok:
                normals[i, 0] = 0.0
                normals[i, 1] = 0.0
                normals[i, 2] = 1.0
                curvature[i] = 0.0
                continue
            if (
                x * (viewpoint[0] - px)
                + y * (viewpoint[1] - py)
                + z * (viewpoint[2] - pz)
                < 0.0
            ):
                x = -x
                y = -y
                z = -z
            normals[i, 0] = x
            normals[i, 1] = y
            normals[i, 2] = z

            rayleigh = (
                c00 * x * x
                + c11 * y * y
                + c22 * z * z
                + 2.0 * (c01 * x * y + c02 * x * z + c12 * y * z)
            )
            trace = c00 + c11 + c22
            if trace > 0.0:
                curvature[i] = max(rayleigh, 0.0) / trace
            else:
                curvature[i] = 0.0
