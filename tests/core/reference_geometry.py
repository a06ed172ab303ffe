"""Slow, obvious NumPy versions of the hybrid search, PCA normals and FPFH.

They follow the definitions line by line (a brute-force distance matrix, ``eigh`` on
each neighbourhood's covariance, one pair feature at a time) so that tests can compare
the Numba kernels against them on small clouds.
"""

from __future__ import annotations

import math

import numpy as np


def centred(points: np.ndarray) -> np.ndarray:
    """Return points minus the midpoint of the bounding box of the finite rows."""
    points = np.asarray(points, np.float64)
    finite = np.isfinite(points).all(axis=1)
    center = 0.5 * (points[finite].min(axis=0) + points[finite].max(axis=0))
    return points - center


def hybrid_neighbours(
    points: np.ndarray, radius: float, max_nn: int
) -> list[np.ndarray]:
    """Return, per point, the ``max_nn`` nearest point indices at ``d < radius``.

    Rows with NaN get an empty list and are never neighbours. Neighbours are sorted
    by (squared distance, index). Distances are taken on centred coordinates.
    """
    xyz = centred(points)
    valid = ~np.isnan(xyz).any(axis=1)
    result = []
    for i in range(len(xyz)):
        if not valid[i]:
            result.append(np.zeros(0, np.intp))
            continue
        diff = xyz - xyz[i]
        d2 = diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2]
        candidates = np.flatnonzero(valid & (d2 < radius * radius))
        order = np.lexsort((candidates, d2[candidates]))
        result.append(candidates[order][:max_nn])
    return result


def normals(
    points: np.ndarray, radius: float, max_nn: int, viewpoint=(0.0, 0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Return normals and curvature from ``eigh`` of each neighbourhood's covariance."""
    xyz = centred(points)
    raw = np.asarray(points, np.float64)
    viewpoint = np.asarray(viewpoint, np.float64)
    out = np.full((len(xyz), 3), np.nan)
    curvature = np.full(len(xyz), np.nan)
    for i, neighbours in enumerate(hybrid_neighbours(points, radius, max_nn)):
        if len(neighbours) == 0:
            continue
        if len(neighbours) < 3:
            out[i] = (0.0, 0.0, 1.0)
            curvature[i] = 0.0
            continue
        local = xyz[neighbours]
        covariance = np.cov(local.T, bias=True)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        normal = eigenvectors[:, 0]
        if np.dot(normal, viewpoint - raw[i]) < 0:
            normal = -normal
        out[i] = normal
        curvature[i] = max(eigenvalues[0], 0.0) / eigenvalues.sum()
    return out, curvature


def pair_feature(p, n, q, m) -> tuple[float, float, float]:
    """Return the three FPFH angle features (f0, f1, f2) of the pair (p, n), (q, m)."""
    d = np.asarray(q, float) - np.asarray(p, float)
    dist = math.sqrt(float(np.dot(d, d)))
    if dist == 0.0:
        return 0.0, 0.0, 0.0
    a1 = float(np.dot(n, d)) / dist
    a2 = float(np.dot(m, d)) / dist
    if math.acos(abs(a1)) > math.acos(abs(a2)):
        source, target, d, f2 = m, n, -d, -a2
    else:
        source, target, f2 = n, m, a1
    v = np.cross(d, source)
    v_norm = float(np.linalg.norm(v))
    if v_norm == 0.0:
        return 0.0, 0.0, 0.0
    v = v / v_norm
    w = np.cross(source, v)
    f1 = float(np.dot(v, target))
    f0 = math.atan2(float(np.dot(w, target)), float(np.dot(source, target)))
    return f0, f1, f2


def feature_bins(f0: float, f1: float, f2: float) -> tuple[int, int, int]:
    """Return the 11-bin indices of the three features, clamped to [0, 10]."""
    bins = (
        math.floor(11 * (f0 + math.pi) / (2 * math.pi)),
        math.floor(11 * (f1 + 1) / 2),
        math.floor(11 * (f2 + 1) / 2),
    )
    return tuple(min(max(b, 0), 10) for b in bins)


def fpfh(
    points: np.ndarray, normals_: np.ndarray, radius: float, max_nn: int
) -> np.ndarray:
    """Return the (N, 33) FPFH from the SPFH / FPFH definitions, one pair at a time."""
    xyz = centred(points)
    normals_ = np.asarray(normals_, np.float64)
    neighbourhoods = hybrid_neighbours(points, radius, max_nn)
    n = len(xyz)

    spfh = np.zeros((n, 33))
    for i, neighbours in enumerate(neighbourhoods):
        if len(neighbours) <= 1:
            continue
        increment = 100.0 / (len(neighbours) - 1)
        for j in neighbours[1:]:
            bins = feature_bins(*pair_feature(xyz[i], normals_[i], xyz[j], normals_[j]))
            for block, b in enumerate(bins):
                spfh[i, 11 * block + b] += increment

    result = np.zeros((n, 33))
    for i, neighbours in enumerate(neighbourhoods):
        if len(neighbours) <= 1:
            continue
        weighted = np.zeros(33)
        for j in neighbours[1:]:
            d2 = float(np.sum((xyz[j] - xyz[i]) ** 2))
            if d2 > 0:
                weighted += spfh[j] / d2
        for block in range(3):
            part = weighted[11 * block : 11 * block + 11]
            total = part.sum()
            if total != 0:
                part *= 100.0 / total
        result[i] = weighted + spfh[i]
    return result


def relative_l1(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, ``sum |ours - reference| / sum |reference|`` (0 where both are 0)."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    error = np.abs(ours - reference).sum(axis=1)
    scale = np.abs(reference).sum(axis=1)
    return np.where(scale > 0, error / np.where(scale > 0, scale, 1.0), error)
