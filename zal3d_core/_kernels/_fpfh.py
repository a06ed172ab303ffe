"""FPFH kernels: pair features, the SPFH pass and the weighted FPFH pass.

Both passes read the same CSR neighbour rows, whose first entry is the query point (or
a point at the same position, which gives the same result). The binning follows
Open3D 0.20 ``pipelines.registration.compute_fpfh_feature``, with three angle
features of 11 bins each. The SPFH of a point with ``m`` neighbours adds ``100 / m``
per pair. The FPFH of a point sums its neighbours' SPFH weighted by ``1 / d2``, scales
each 11-bin block of that sum to 100, and adds its own SPFH.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .._numba import jit

N_BINS = 11
N_FEATURES = 3 * N_BINS
BLOCK = 32

# Below this difference of |a1| and |a2| the two acos values may round to the same
# number, so the swap test computes them as Open3D does instead of comparing |a|.
# acos has slope magnitude >= 1, so larger differences order the acos values the
# opposite way to |a| by far more than their rounding error (about 2.2e-16).
ACOS_TIE = 1e-14

# Neighbours with a squared distance below this (closer than about 1e-145) count as
# coinciding with the point and get no FPFH weight: their weight 1 / d2 could
# overflow, and inf / inf would turn the whole histogram into NaN.
TINY_D2 = 1e-290


@jit(strict=True)
def _bin(value, low, span):
    index = int(math.floor(N_BINS * (value - low) / span))
    if index < 0:
        return 0
    if index >= N_BINS:
        return N_BINS - 1
    return index


@jit(strict=True)
def pair_bins(px, py, pz, nx, ny, nz, qx, qy, qz, mx, my, mz):
    """Return the three bin indices of the pair feature of (p, n) and (q, m).

    Compiled without fast-math, so IEEE double rounding and signed zeros are kept:
    ``atan2(-0.0, -1.0)`` is ``-pi`` and falls in bin 0, not bin 10. A pair at
    distance 0, or whose cross product vanishes, has all features 0.
    """
    dx = qx - px
    dy = qy - py
    dz = qz - pz
    dist = math.sqrt(dx * dx + dy * dy + dz * dz)
    if dist == 0.0:
        return 5, 5, 5
    a1 = (nx * dx + ny * dy + nz * dz) / dist
    a2 = (mx * dx + my * dy + mz * dz) / dist
    abs1 = abs(a1)
    abs2 = abs(a2)
    # The source of the pair is the point whose normal makes the smaller angle with
    # the line between them: swap when acos(|a1|) > acos(|a2|).
    swap = abs1 < abs2
    if swap and abs2 - abs1 < ACOS_TIE:
        swap = math.acos(abs1) > math.acos(abs2)
    if swap:
        sx, sy, sz = mx, my, mz
        tx, ty, tz = nx, ny, nz
        dx = -dx
        dy = -dy
        dz = -dz
        f2 = -a2
    else:
        sx, sy, sz = nx, ny, nz
        tx, ty, tz = mx, my, mz
        f2 = a1

    vx = dy * sz - dz * sy
    vy = dz * sx - dx * sz
    vz = dx * sy - dy * sx
    v_norm = math.sqrt(vx * vx + vy * vy + vz * vz)
    if v_norm == 0.0:
        return 5, 5, 5
    vx /= v_norm
    vy /= v_norm
    vz /= v_norm
    wx = sy * vz - sz * vy
    wy = sz * vx - sx * vz
    wz = sx * vy - sy * vx
    f1 = vx * tx + vy * ty + vz * tz
    f0 = math.atan2(wx * tx + wy * ty + wz * tz, sx * tx + sy * ty + sz * tz)
    return _bin(f0, -math.pi, 2.0 * math.pi), _bin(f1, -1.0, 2.0), _bin(f2, -1.0, 2.0)


@jit(parallel=True)
def spfh(points, normals, indptr, indices, out):
    """Write the SPFH of each point into ``out`` (n, 33) float64.

    A row with at most one entry (no neighbour besides the point) gets zeros.
    """
    n = points.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for block in prange(n_blocks):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            for b in range(N_FEATURES):
                out[i, b] = 0.0
            start = indptr[i]
            end = indptr[i + 1]
            if end - start <= 1:
                continue
            increment = 100.0 / (end - start - 1)
            px = points[i, 0]
            py = points[i, 1]
            pz = points[i, 2]
            nx = normals[i, 0]
            ny = normals[i, 1]
            nz = normals[i, 2]
            for e in range(start + 1, end):
                j = indices[e]
                b0, b1, b2 = pair_bins(
                    px,
                    py,
                    pz,
                    nx,
                    ny,
                    nz,
                    points[j, 0],
                    points[j, 1],
                    points[j, 2],
                    normals[j, 0],
                    normals[j, 1],
                    normals[j, 2],
                )
                out[i, b0] += increment
                out[i, N_BINS + b1] += increment
                out[i, 2 * N_BINS + b2] += increment


@jit(parallel=True)
def fpfh(spfh_values, indptr, indices, d2, out):
    """Write the FPFH of each point into ``out`` (n, 33) float32 from the SPFH.

    Neighbours closer than about 1e-145 (``d2 < TINY_D2``) are skipped. A row with at
    most one entry gets zeros.
    """
    n = spfh_values.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for block in prange(n_blocks):
        accumulator = np.empty(N_FEATURES, np.float64)
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            start = indptr[i]
            end = indptr[i + 1]
            if end - start <= 1:
                for b in range(N_FEATURES):
                    out[i, b] = 0.0
                continue
            for b in range(N_FEATURES):
                accumulator[b] = 0.0
            for e in range(start + 1, end):
                if d2[e] < TINY_D2:
                    continue
                weight = 1.0 / d2[e]
                j = indices[e]
                for b in range(N_FEATURES):
                    accumulator[b] += spfh_values[j, b] * weight
            for block_start in range(0, N_FEATURES, N_BINS):
                total = 0.0
                for b in range(block_start, block_start + N_BINS):
                    total += accumulator[b]
                factor = 100.0 / total if total != 0.0 else 0.0
                for b in range(block_start, block_start + N_BINS):
                    out[i, b] = accumulator[b] * factor + spfh_values[i, b]
