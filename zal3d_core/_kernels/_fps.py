"""Farthest point sampling kernel."""

from __future__ import annotations

import numpy as np

from .._numba import jit


# Strict arithmetic keeps the squared distances equal to a plain NumPy
# ``((points - point) ** 2).sum(axis=1)``, so ties resolve the same way everywhere.
@jit(strict=True)
def farthest_point_sampling(points, n_samples, start):
    """Pick ``n_samples`` row indices of ``points`` (N, D) by farthest point sampling.

    The first pick is ``start``. Each next pick is the unpicked point whose squared
    distance to its nearest pick is largest, the lowest index among equal distances.
    Picks are distinct even when points repeat. Extra memory is one float64 per point.
    """
    n, d = points.shape
    selected = np.empty(n_samples, np.intp)
    # Squared distance to the nearest pick, or -1 for a picked point.
    nearest_d2 = np.full(n, np.inf)
    current = start
    for s in range(n_samples):
        selected[s] = current
        nearest_d2[current] = -1.0
        best = -1
        best_d2 = -1.0
        for i in range(n):
            if nearest_d2[i] < 0.0:
                continue
            d2 = 0.0
            for k in range(d):
                diff = points[i, k] - points[current, k]
                d2 += diff * diff
            if d2 < nearest_d2[i]:
                nearest_d2[i] = d2
            if nearest_d2[i] > best_d2:
                best_d2 = nearest_d2[i]
                best = i
        current = best
    return selected
