"""Slow, obvious versions of the memory-bank functions, written independently of
zal3d_core.coreset and zal3d_core.scoring.

The greedy coreset recomputes every distance to the newest pick in float64 NumPy. The
scores come from the full SciPy ``cdist`` matrix and ``scipy.special.softmax``. The
bilinear resize visits each output pixel in a Python loop.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import softmax


def reference_greedy_coreset(features, n, start=0):
    """Pick ``n`` rows by farthest-point selection in float64, ties to the lower row."""
    points = np.asarray(features, dtype=np.float64)
    min_d2 = np.full(len(points), np.inf)
    picks = []
    pick = start
    for _ in range(n):
        picks.append(pick)
        d2 = ((points - points[pick]) ** 2).sum(axis=1)
        min_d2 = np.minimum(min_d2, d2)
        min_d2[picks] = -1.0
        pick = int(np.argmax(min_d2))  # argmax returns the first maximum
    return np.array(picks, dtype=np.intp)


def covering_radius(features, indices):
    """Return the largest distance from any row to its nearest selected row, float64."""
    points = np.asarray(features, dtype=np.float64)
    return float(cdist(points, points[np.asarray(indices)]).min(axis=1).max())


def reference_scores(queries, bank, n_reweight):
    """Return PatchCore scores, distances, nearest rows and supports by brute force."""
    queries = np.asarray(queries, dtype=np.float64)
    bank = np.asarray(bank, dtype=np.float64)
    size = min(n_reweight, len(bank))
    to_bank = cdist(queries, bank)
    nearest = to_bank.argmin(axis=1)  # argmin returns the first minimum
    distances = to_bank[np.arange(len(queries)), nearest]

    supports = []
    for m in nearest:
        to_others = cdist(bank[m : m + 1], bank)[0]
        others = np.argsort(to_others, kind="stable")
        others = others[others != m]
        supports.append([m, *others[: size - 1]])
    supports = np.array(supports, dtype=np.intp).reshape(len(queries), size)

    scores = []
    for i, support in enumerate(supports):
        d = to_bank[i, support]
        weight = 1.0 - softmax(d)[0]
        scores.append(d[0] if size == 1 else weight * d[0])
    return np.array(scores), distances, nearest, supports


def reference_bilinear(grid, shape):
    """Resize a 2-D grid like torch's bilinear interpolate with align_corners=False."""
    grid = np.asarray(grid, dtype=np.float64)
    in_h, in_w = grid.shape
    out_h, out_w = shape
    out = np.empty(shape)

    def source(i, n_in, n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(math.floor(x), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        return lo, hi, x - lo if lo < n_in - 1 else 0.0

    for r in range(out_h):
        r0, r1, fr = source(r, in_h, out_h)
        for c in range(out_w):
            c0, c1, fc = source(c, in_w, out_w)
            top = (1 - fc) * grid[r0, c0] + fc * grid[r0, c1]
            bottom = (1 - fc) * grid[r1, c0] + fc * grid[r1, c1]
            out[r, c] = (1 - fr) * top + fr * bottom
    return out
