"""RANSAC plane search over centred float64 points.

The random draws come in as an array of uniforms made by the caller from its seed, so
the kernel keeps no random state and the same seed gives the same plane.
"""

from __future__ import annotations

import numpy as np

from .._numba import jit

# A sample is degenerate (collinear or repeated points) when its plane normal is this
# small relative to the sample's own extent.
DEGENERATE_TOLERANCE = 1e-9


@jit
def _plane_through(sample):
    """Fit a plane to ``sample`` (n, 3) and return (a, b, c, d, ok) with a unit normal.

    Three points give the plane through them, and more points give the least-squares
    plane. ``ok`` is False for a degenerate sample.
    """
    n = sample.shape[0]
    if n == 3:
        ux = sample[1, 0] - sample[0, 0]
        uy = sample[1, 1] - sample[0, 1]
        uz = sample[1, 2] - sample[0, 2]
        vx = sample[2, 0] - sample[0, 0]
        vy = sample[2, 1] - sample[0, 1]
        vz = sample[2, 2] - sample[0, 2]
        nx = uy * vz - uz * vy
        ny = uz * vx - ux * vz
        nz = ux * vy - uy * vx
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        scale = np.sqrt((ux * ux + uy * uy + uz * uz) * (vx * vx + vy * vy + vz * vz))
        if not norm > DEGENERATE_TOLERANCE * scale:
            return 0.0, 0.0, 0.0, 0.0, False
        nx /= norm
        ny /= norm
        nz /= norm
        d = -(nx * sample[0, 0] + ny * sample[0, 1] + nz * sample[0, 2])
        return nx, ny, nz, d, True

    mean = np.zeros(3)
    for i in range(n):
        for k in range(3):
            mean[k] += sample[i, k]
    for k in range(3):
        mean[k] /= n
    covariance = np.zeros((3, 3))
    for i in range(n):
        for j in range(3):
            for k in range(3):
                covariance[j, k] += (sample[i, j] - mean[j]) * (sample[i, k] - mean[k])
    values, vectors = np.linalg.eigh(covariance)
    # Collinear samples have two (near) zero eigenvalues.
    if not values[1] > DEGENERATE_TOLERANCE * values[2]:
        return 0.0, 0.0, 0.0, 0.0, False
    nx = vectors[0, 0]
    ny = vectors[1, 0]
    nz = vectors[2, 0]
    d = -(nx * mean[0] + ny * mean[1] + nz * mean[2])
    return nx, ny, nz, d, True


@jit
def ransac_plane(points, uniforms, threshold):
    """Return the plane with the most points within ``threshold``, and that count.

    Parameters
    ----------
    points : ndarray of shape (m, 3), float64
        Finite, centred points.
    uniforms : ndarray of shape (iterations, n_sample), float64
        Uniform draws in [0, 1). Row ``i`` picks the ``n_sample`` distinct points of
        iteration ``i`` by a partial Fisher-Yates shuffle of a running index order.
    threshold : float
        Inlier distance (``|distance| <= threshold``).

    Returns
    -------
    plane : ndarray of shape (4,), float64
        ``(a, b, c, d)`` with a unit normal, or zeros if every sample was degenerate.
    count : int
        Number of inliers of ``plane``, or -1 if every sample was degenerate.

    Ties in the inlier count go to the plane with the smaller sum of squared inlier
    distances, then to the earlier iteration.
    """
    m = points.shape[0]
    iterations = uniforms.shape[0]
    n_sample = uniforms.shape[1]
    order = np.arange(m)
    sample = np.empty((n_sample, 3))
    best = np.zeros(4)
    best_count = -1
    best_cost = np.inf
    for iteration in range(iterations):
        for j in range(n_sample):
            k = j + int(uniforms[iteration, j] * (m - j))
            if k >= m:
                k = m - 1
            swap = order[j]
            order[j] = order[k]
            order[k] = swap
            for axis in range(3):
                sample[j, axis] = points[order[j], axis]
        a, b, c, d, ok = _plane_through(sample)
        if not ok:
            continue
        count = 0
        cost = 0.0
        for i in range(m):
            distance = abs(a * points[i, 0] + b * points[i, 1] + c * points[i, 2] + d)
            if distance <= threshold:
                count += 1
                cost += distance * distance
        if count > best_count or (count == best_count and cost < best_cost):
            best_count = count
            best_cost = cost
            best[0] = a
            best[1] = b
            best[2] = c
            best[3] = d
    return best, best_count


@jit
def near_plane(xyz, valid, plane, center, distance):
    """Return the (H, W) mask of valid pixels within ``distance`` of ``plane``.

    ``plane`` is (a, b, c, d) in coordinates centred on ``center``. Each point is
    converted to float64 and centred before its distance is taken.
    """
    height, width = valid.shape
    out = np.zeros((height, width), np.bool_)
    a, b, c, d = plane[0], plane[1], plane[2], plane[3]
    for i in range(height):
        for j in range(width):
            if not valid[i, j]:
                continue
            x = np.float64(xyz[i, j, 0]) - center[0]
            y = np.float64(xyz[i, j, 1]) - center[1]
            z = np.float64(xyz[i, j, 2]) - center[2]
            if abs(a * x + b * y + c * z + d) <= distance:
                out[i, j] = True
    return out
