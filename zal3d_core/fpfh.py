"""Fast Point Feature Histograms (FPFH), computed as Open3D 0.20 computes them.

Each point gets 33 values: three 11-bin histograms of the angles between its normal,
its neighbours' normals and the lines joining them. The neighbourhoods are searched
once (see :mod:`zal3d_core.normals`) and used by both passes: the simplified histogram
(SPFH) of every point, then the FPFH that adds the neighbours' SPFH weighted by
``1 / squared distance``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._kernels import _fpfh
from ._numba import num_threads
from ._validation import as_float_array, check_organized, check_points
from .normals import (
    Neighbourhoods,
    _check_cloud,
    _check_common,
    _check_search,
    resolve_window,
    search_tree,
    search_window,
)

__all__ = ["N_FPFH_BINS", "compute_fpfh", "compute_fpfh_organized"]

logger = logging.getLogger(__name__)

N_FPFH_BINS = _fpfh.N_FEATURES

# A normal counts as unit length when its norm is within this of 1. Normals stored
# in float32 are within about 1e-7.
UNIT_TOLERANCE = 1e-3


def _check_normals(normals: Any, points_shape: tuple, valid: np.ndarray) -> np.ndarray:
    """Check normals against the points and return them as float64 (n, 3)."""
    normals = check_points(normals, "normals", dim=3, allow_nan=True, min_points=0)
    if normals.shape[0] != points_shape[0]:
        raise ValueError(
            f"normals must have one row per point, shape ({points_shape[0]}, 3), "
            f"but got {normals.shape}. Pass the normals estimated for these points."
        )
    normals = np.asarray(normals, np.float64)
    norms = np.linalg.norm(normals[valid], axis=1)
    bad = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE)
    if bad.any():
        example = norms[bad][0]
        raise ValueError(
            f"normals must be unit vectors at every valid point, but {int(bad.sum())} "
            f"of {int(valid.sum())} rows at valid points are NaN, zero or not of "
            f"length 1 (e.g. length {example:.6g}). Compute them with "
            "estimate_normals, or normalise them with "
            "normals / np.linalg.norm(normals, axis=1, keepdims=True)."
        )
    return normals


def _features_of(neighbourhoods: Neighbourhoods, normals: np.ndarray) -> np.ndarray:
    n = neighbourhoods.points.shape[0]
    spfh = np.empty((n, N_FPFH_BINS), np.float64)
    _fpfh.spfh(
        neighbourhoods.points,
        normals,
        neighbourhoods.indptr,
        neighbourhoods.indices,
        spfh,
    )
    features = np.empty((n, N_FPFH_BINS), np.float32)
    _fpfh.fpfh(
        spfh,
        neighbourhoods.indptr,
        neighbourhoods.indices,
        neighbourhoods.d2,
        features,
    )
    return features


def compute_fpfh(
    points: Any,
    normals: Any,
    radius: float,
    max_nn: int,
    *,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Compute the 33-bin FPFH descriptor of every point.

    Parameters
    ----------
    points : array-like of shape (n_points, 3), float32 or float64
        Coordinates. Rows containing NaN are missing points: they are left out of the
        search and get zero features.
    normals : array-like of shape (n_points, 3)
        Unit normals, for example from :func:`~zal3d_core.normals.estimate_normals`.
        Rows of missing points are ignored and may be NaN.
    radius : float
        Search radius, > 0. Neighbours lie at distance ``< radius``.
    max_nn : int
        Maximum number of neighbours (the point itself included), >= 1.
    n_jobs : int, optional
        Threads to use; ``None`` keeps Numba's current setting, ``-1`` uses all.

    Returns
    -------
    ndarray of shape (n_points, 33), float32
        Three 11-bin histograms per point: the azimuth angle, the angle between the
        second normal and the pair's plane, and the angle between the first normal and
        the joining line. Each block of a point with at least one neighbour sums to
        200, or to 100 when all its neighbours coincide with it (then only its own
        SPFH remains, as in Open3D 0.20). Neighbours closer than about 1e-145 count
        as coinciding. A point without neighbour, or a missing point, gets zeros.

    Raises
    ------
    ValueError
        If the shapes are wrong, ``points`` has no valid row, a valid point's normal is
        not a unit vector, ``radius`` is not a finite number > 0, or ``max_nn < 1``.
    TypeError
        If an array is not numeric or ``radius``, ``max_nn`` have the wrong type.

    Notes
    -----
    Given the same points, normals and search parameters, the result matches the
    transposed ``open3d.pipelines.registration.compute_fpfh_feature(pcd,
    KDTreeSearchParamHybrid(radius, max_nn))`` of Open3D 0.20. Two things can move a
    vote to another bin: an angle within rounding of a bin edge, and a tie at the
    ``max_nn``-th neighbour that Open3D breaks differently (here the lower index
    wins). A flat patch with consistently oriented normals gives 200 in bins 5, 16
    and 27. Flipping all normals mirrors the first and third blocks (bin ``b`` to
    ``10 - b``) and leaves the second unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.fpfh import compute_fpfh
    >>> grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    >>> points = np.column_stack([grid, np.zeros(25)])
    >>> normals = np.tile([0.0, 0.0, 1.0], (25, 1))
    >>> features = compute_fpfh(points, normals, radius=2.5, max_nn=30)
    >>> np.flatnonzero(features[12]).tolist(), features[12, [5, 16, 27]].tolist()
    ([5, 16, 27], [200.0, 200.0, 200.0])
    """
    points, valid = _check_cloud(points)
    normals = _check_normals(normals, points.shape, valid)
    radius, max_nn = _check_common(radius, max_nn)

    logger.debug(
        "compute_fpfh: %d of %d points valid, radius %g, max_nn %d",
        int(valid.sum()),
        points.shape[0],
        radius,
        max_nn,
    )
    with num_threads(n_jobs):
        neighbourhoods = search_tree(points[valid], radius, max_nn)
        valid_features = _features_of(
            neighbourhoods, np.ascontiguousarray(normals[valid])
        )
    if valid.all():
        return valid_features
    features = np.zeros((points.shape[0], N_FPFH_BINS), np.float32)
    features[valid] = valid_features
    return features


def compute_fpfh_organized(
    xyz: Any,
    normals: Any,
    radius: float,
    max_nn: int,
    *,
    search: str = "window",
    window: int | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Compute the FPFH descriptor of every pixel of an organized cloud.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3), float32 or float64
        Organized cloud with NaN where no point was measured.
    normals : array-like of shape (H, W, 3)
        Unit normals at the valid pixels, for example from
        :func:`~zal3d_core.normals.estimate_normals_organized`; other pixels are
        ignored.
    radius, max_nn, n_jobs
        As in :func:`compute_fpfh`.
    search : {"window", "tree"}, default "window"
        ``"tree"`` gives the result of :func:`compute_fpfh` on the valid points.
        ``"window"`` looks for neighbours only among the pixels of a
        ``(2 * window + 1)`` square around each pixel, which is faster.
    window : int, optional
        Half width of the image window, >= 1. ``None`` picks it from ``radius`` and
        the pixel pitch as :func:`~zal3d_core.normals.estimate_normals_organized`
        does. Values above ``max(H, W)`` act as ``max(H, W)``.

    Returns
    -------
    ndarray of shape (H, W, 33), float32
        Zeros at pixels without a point.
    """
    xyz = check_organized(xyz, "xyz")
    radius, max_nn = _check_common(radius, max_nn)
    search, window = _check_search(search, window)
    height, width, _ = xyz.shape
    flat_points = xyz.reshape(-1, 3)
    normals_array = as_float_array(normals, "normals")
    if normals_array.shape != xyz.shape:
        raise ValueError(
            f"normals must have the shape of xyz, {xyz.shape}, but got "
            f"{normals_array.shape}. Pass the normals of estimate_normals_organized."
        )
    valid = ~np.isnan(flat_points).any(axis=1)
    if not valid.any():
        raise ValueError(
            f"xyz must contain at least one valid point, but all {height * width} "
            "pixels contain NaN (missing points). Pass a cloud with finite coordinates."
        )
    flat_normals = _check_normals(
        normals_array.reshape(-1, 3), flat_points.shape, valid
    )

    if search == "tree":
        features = compute_fpfh(
            flat_points, flat_normals, radius, max_nn, n_jobs=n_jobs
        )
    else:
        half = resolve_window(xyz, radius, window)
        with num_threads(n_jobs):
            neighbourhoods = search_window(xyz, radius, max_nn, half)
            features = _features_of(neighbourhoods, np.ascontiguousarray(flat_normals))
    return features.reshape(height, width, N_FPFH_BINS)
