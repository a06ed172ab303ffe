"""Normals by PCA of hybrid neighbourhoods, and the neighbour search they share.

The hybrid neighbourhood of a point is the ``max_nn`` nearest points at distance
``< radius``, the point itself included. Open3D 0.20's
``KDTreeSearchParamHybrid(radius, max_nn)`` uses the same strict bound: a point at
exactly ``radius`` is outside. Neighbours come sorted by (squared distance, index), so
ties at the ``max_nn``-th distance go to the lower index. Unorganized clouds are
searched with the KD-tree of :mod:`zal3d_core.neighbors`. Organized clouds can also be
searched in a square image window around each pixel, which is faster and nearly always
finds the same points.

The search results are CSR rows (``indptr``, int32 ``indices``, float64 ``d2``) over
the points, so :mod:`zal3d_core.fpfh` can search once and run two passes on them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._kernels import _kdtree, _normals, _window
from ._numba import num_threads
from ._validation import (
    center_points,
    check_int,
    check_organized,
    check_points,
    check_positive,
    check_viewpoint,
)
from .neighbors import KDTree

__all__ = [
    "estimate_normals",
    "estimate_normals_organized",
    "median_point_spacing",
]

logger = logging.getLogger(__name__)

SEARCH_MODES = ("window", "tree")

# Automatic image window: the half width is ceil(WINDOW_MARGIN * radius / pitch),
# between 1 and WINDOW_MAX_HALF (a 65 x 65 window at most).
WINDOW_MARGIN = 1.5
WINDOW_MAX_HALF = 32

# Packed neighbour lists that fill less than this share of their padded buffer are
# copied out, so that a max_nn far above the real counts does not keep that buffer.
_PACK_COPY_FILL = 0.5


@dataclass
class Neighbourhoods:
    """Hybrid neighbourhoods of ``n`` points as CSR rows.

    Attributes
    ----------
    points : ndarray of shape (n, 3), float64
        The points in centred coordinates, NaN at pixels without a point (window
        search only).
    center : ndarray of shape (3,), float64
        The offset subtracted from the caller's coordinates.
    indptr : ndarray of shape (n + 1,), int64
        Row ``i`` is ``indices[indptr[i]:indptr[i + 1]]``. An empty row is a missing
        point. The first entry of a row is the point itself (or one at the same place).
    indices : ndarray of shape (nnz,), int32
        Neighbour indices into ``points``, sorted by (squared distance, index).
    d2 : ndarray of shape (nnz,), float64
        Squared distances of the entries of ``indices``.
    """

    points: np.ndarray
    center: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    d2: np.ndarray


def _radius_bound(radius: float) -> float:
    """Return the largest squared distance inside an open ball of ``radius``.

    The kernels test ``d2 <= bound``, and the float just below ``radius**2`` makes that
    the strict test ``d2 < radius**2`` of Open3D 0.20.
    """
    return float(np.nextafter(radius * radius, 0.0))


def _check_index_range(n: int) -> None:
    if n > np.iinfo(np.int32).max:
        raise ValueError(
            f"the cloud has {n} points or pixels, but neighbour indices are int32 and "
            f"allow at most {np.iinfo(np.int32).max}. Split the cloud into parts."
        )


def _pack(counts: np.ndarray, idx: np.ndarray, d2: np.ndarray):
    indptr, nnz = _window.pack_rows(counts, idx, d2)
    indices = idx.reshape(-1)[:nnz]
    distances = d2.reshape(-1)[:nnz]
    if nnz < _PACK_COPY_FILL * idx.size:
        indices = indices.copy()
        distances = distances.copy()
    return indptr, indices, distances


def search_tree(points: np.ndarray, radius: float, max_nn: int) -> Neighbourhoods:
    """Search the hybrid neighbourhood of every point with a KD-tree.

    ``points`` is an (n, 3) float array without NaN. The caller sets the thread count
    with ``num_threads``.
    """
    centred, center = center_points(points)
    centred = np.ascontiguousarray(centred)
    n = centred.shape[0]
    _check_index_range(n)
    k = min(max_nn, n)
    tree = _kdtree.build_tree(centred, 16)
    idx = np.empty((n, k), np.int32)
    d2 = np.empty((n, k), np.float64)
    counts = np.empty(n, np.int64)
    _window.tree_search(tree, centred, k, _radius_bound(radius), idx, d2, counts)
    indptr, indices, distances = _pack(counts, idx, d2)
    return Neighbourhoods(centred, center, indptr, indices, distances)


def search_window(
    xyz: np.ndarray, radius: float, max_nn: int, half: int
) -> Neighbourhoods:
    """Search the hybrid neighbourhood of every pixel in its image window.

    ``xyz`` is an (H, W, 3) float array with NaN for missing points. Rows and indices
    refer to flat pixel indices ``row * W + col``. The caller sets the thread count with
    ``num_threads``.
    """
    height, width, _ = xyz.shape
    centred, center = center_points(xyz.reshape(-1, 3))
    centred = np.ascontiguousarray(centred)
    valid = ~np.isnan(centred).any(axis=1)
    n = centred.shape[0]
    _check_index_range(n)
    k = min(max_nn, (2 * half + 1) ** 2, n)
    idx = np.empty((n, k), np.int32)
    d2 = np.empty((n, k), np.float64)
    counts = np.empty(n, np.int64)
    _window.window_search(
        centred, valid, width, half, k, _radius_bound(radius), idx, d2, counts
    )
    indptr, indices, distances = _pack(counts, idx, d2)
    return Neighbourhoods(centred, center, indptr, indices, distances)


def _adjacent_pixel_distances(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return positive 3D distances between valid horizontal and vertical neighbours."""
    xyz = np.asarray(xyz, np.float64)
    valid = ~np.isnan(xyz).any(axis=2)
    horizontal = np.linalg.norm(xyz[:, 1:] - xyz[:, :-1], axis=2)
    vertical = np.linalg.norm(xyz[1:] - xyz[:-1], axis=2)
    horizontal = horizontal[valid[:, 1:] & valid[:, :-1]]
    vertical = vertical[valid[1:] & valid[:-1]]
    return horizontal[horizontal > 0.0], vertical[vertical > 0.0]


def median_point_spacing(points_or_xyz: Any, *, n_jobs: int | None = None) -> float:
    """Measure the typical distance between neighbouring points of a cloud.

    Parameters
    ----------
    points_or_xyz : array-like of shape (n_points, 3) or (H, W, 3)
        An unorganized cloud, or an organized one. Rows or pixels with NaN are missing
        points and are ignored.
    n_jobs : int, optional
        Threads for the KD-tree queries of an unorganized cloud; ``None`` keeps
        Numba's current setting, ``-1`` uses all.

    Returns
    -------
    float
        For an organized cloud, the median 3D distance between horizontally or
        vertically adjacent pixels that both hold a point (the pixel pitch). For an
        unorganized cloud, the median distance from each distinct point to the nearest
        other one. Repeated points and pixels (distance 0) are left out, so a cloud
        whose points all appear twice has the spacing of its distinct points.

    Raises
    ------
    ValueError
        If the cloud has no two distinct valid points that are adjacent pixels
        (organized) or no two distinct valid points (unorganized).

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.normals import median_point_spacing
    >>> grid = np.stack(np.meshgrid(np.arange(4.0), np.arange(3.0)), -1)
    >>> xyz = np.concatenate([0.01 * grid, np.ones((3, 4, 1))], axis=2)
    >>> round(median_point_spacing(xyz), 6)
    0.01
    >>> round(median_point_spacing(xyz.reshape(-1, 3)), 6)
    0.01
    """
    try:
        ndim = np.ndim(points_or_xyz)
    except ValueError:  # a ragged nested list; check_points reports it
        ndim = None
    if ndim == 3:
        xyz = check_organized(points_or_xyz, "points_or_xyz")
        distances = np.concatenate(_adjacent_pixel_distances(xyz))
        if distances.size == 0:
            raise ValueError(
                f"points_or_xyz of shape {xyz.shape} has no two horizontally or "
                "vertically adjacent pixels that hold distinct points, so it has no "
                "pixel pitch. Pass a cloud with a connected valid region, or its valid "
                "points as an (N, 3) array."
            )
        return float(np.median(distances))

    points = check_points(points_or_xyz, "points_or_xyz", allow_nan=True, min_points=0)
    distinct = np.unique(points[~np.isnan(points).any(axis=1)], axis=0)
    if distinct.shape[0] < 2:
        raise ValueError(
            "points_or_xyz must contain at least 2 distinct valid (non-NaN) points to "
            f"measure a spacing, but got {distinct.shape[0]}. Pass a larger cloud."
        )
    distances, _ = KDTree(distinct).query(distinct, k=2, n_jobs=n_jobs)
    spacing = float(np.median(distances[:, 1]))
    if not spacing > 0.0:
        # Distinct points whose squared distance underflows to 0 in float64.
        raise ValueError(
            "points_or_xyz has distinct points, but most lie closer together than "
            "float64 squared distances resolve (below about 1e-154), so the spacing "
            "is 0. Rescale the coordinates."
        )
    return spacing


def window_half_width(radius: float, pitch: float) -> int:
    """Choose the image-window half width for a search radius and a pixel pitch.

    The half width is ``ceil(1.5 * radius / pitch)``, at least 1 and at most 32. The
    margin of 1.5 covers surfaces nearer the camera than the median depth and facing
    it, where the pitch is finer than the median. A pitch of 0 gives the maximum.
    """
    if pitch <= 0.0:
        return WINDOW_MAX_HALF
    half = math.ceil(WINDOW_MARGIN * radius / pitch)
    return int(min(max(half, 1), WINDOW_MAX_HALF))


def window_pitch(xyz: np.ndarray) -> float:
    """Return the pixel pitch that sets the automatic image window of ``xyz``.

    It is the smaller of the median horizontal and the median vertical distance
    between adjacent valid pixels (zeros left out), so an image resized by different
    factors along its two axes gets a window wide enough along the finer one.
    Returns 0 when no two adjacent pixels hold distinct points.
    """
    medians = [
        float(np.median(distances))
        for distances in _adjacent_pixel_distances(xyz)
        if distances.size
    ]
    return min(medians) if medians else 0.0


def _check_common(radius: Any, max_nn: Any) -> tuple[float, int]:
    radius = check_positive(radius, "radius")
    max_nn = check_int(max_nn, "max_nn", minimum=1)
    return radius, max_nn


def _check_cloud(points: Any, name: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """Check an (N, 3) cloud that may hold NaN rows; return it and its valid mask."""
    points = check_points(points, name, allow_nan=True, min_points=0)
    valid = ~np.isnan(points).any(axis=1)
    if points.shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape {points.shape}). Pass at least one point."
        )
    if not valid.any():
        raise ValueError(
            f"{name} must contain at least one valid point, but all {points.shape[0]} "
            "rows contain NaN (missing points). Pass a cloud with finite coordinates."
        )
    return points, valid


def _check_search(search: Any, window: Any) -> tuple[str, int | None]:
    if search not in SEARCH_MODES:
        raise ValueError(
            f"search must be one of {SEARCH_MODES}, but got {search!r}. Use 'window' "
            "for the image-window search or 'tree' for the KD-tree."
        )
    if window is not None:
        window = check_int(window, "window", minimum=1)
    return search, window


def resolve_window(xyz: np.ndarray, radius: float, window: int | None) -> int:
    """Return ``window`` or, when it is None, the automatic half width for ``xyz``.

    A window wider than the image covers the same pixels as one of half width
    ``max(H, W)``, so larger values are clamped to that: the kernels size their buffers
    by the window, and an unclamped huge window would overflow them.
    """
    if window is not None:
        return min(window, max(xyz.shape[0], xyz.shape[1]))
    pitch = window_pitch(xyz)
    # NOTE: an image upsampled with nearest-neighbour interpolation repeats pixels,
    # whose zero distances are left out of the pitch, so its automatic window covers
    # too few pixels. Pass window explicitly for such images.
    half = window_half_width(radius, pitch)
    logger.debug(
        "image window half width %d (radius %g, pitch %g)", half, radius, pitch
    )
    return half


def _normals_of(
    neighbourhoods: Neighbourhoods, viewpoint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = neighbourhoods.points.shape[0]
    normals = np.empty((n, 3), np.float32)
    curvature = np.empty(n, np.float32)
    _normals.normals_from_neighbours(
        neighbourhoods.points,
        neighbourhoods.indptr,
        neighbourhoods.indices,
        np.ascontiguousarray(viewpoint - neighbourhoods.center),
        normals,
        curvature,
    )
    return normals, curvature


def estimate_normals(
    points: Any,
    radius: float,
    max_nn: int,
    viewpoint: Any = (0.0, 0.0, 0.0),
    *,
    return_curvature: bool = False,
    n_jobs: int | None = None,
):
    """Estimate oriented normals by PCA of each point's hybrid neighbourhood.

    Parameters
    ----------
    points : array-like of shape (n_points, 3), float32 or float64
        Coordinates. Rows containing NaN are missing points: they are left out of the
        search and get NaN normals.
    radius : float
        Search radius, > 0. Neighbours lie at distance ``< radius``.
    max_nn : int
        Maximum number of neighbours (the point itself included), >= 1.
    viewpoint : array-like of shape (3,), default (0, 0, 0)
        Normals are flipped to point toward it: ``dot(n, viewpoint - p) >= 0``. The
        default is the camera of a scan in camera coordinates (MVTec 3D-AD, PCL
        organized captures).
    return_curvature : bool, default False
        Also return the curvature.
    n_jobs : int, optional
        Threads to use; ``None`` keeps Numba's current setting, ``-1`` uses all.

    Returns
    -------
    normals : ndarray of shape (n_points, 3), float32
        Unit normals, NaN for missing points.
    curvature : ndarray of shape (n_points,), float32
        Only with ``return_curvature``: the smallest eigenvalue of the neighbourhood
        covariance over the sum of its eigenvalues, in ``[0, 1/3]``; NaN for missing
        points.

    Raises
    ------
    ValueError
        If ``points`` is not (N, 3) or has no valid row, ``radius`` is not a finite
        number > 0, ``max_nn < 1`` or ``viewpoint`` is not a finite 3-vector.
    TypeError
        If ``points`` is not numeric or ``radius``, ``max_nn`` have the wrong type.

    Notes
    -----
    The covariance is accumulated in float64 on offsets from each point, after the
    cloud is centred in float64, so scans far from the origin keep their precision.
    Float32 input keeps only the precision of its own values: near 5e5 a float32
    coordinate is a multiple of 2**-5, so pass such clouds as float64.

    A point with fewer than 3 neighbours (itself included), or whose neighbours all
    coincide with it, gets the normal (0, 0, 1) without orientation and curvature 0,
    as Open3D 0.20 ``estimate_normals`` does. Neighbours within about 1e-145 of each
    other count as coinciding, because float64 products of such offsets underflow.
    Coordinates must be at most 1e100 in magnitude. Given the same neighbours, and
    where the smallest eigenvalue is not repeated, the normals agree with Open3D's up
    to sign.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.normals import estimate_normals
    >>> grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    >>> points = np.column_stack([grid, np.full(25, 10.0)])
    >>> normals = estimate_normals(points, radius=1.5, max_nn=9)
    >>> normals[12, 2].item()  # the plane z = 10 seen from the origin
    -1.0
    """
    points, valid = _check_cloud(points)
    radius, max_nn = _check_common(radius, max_nn)
    viewpoint = check_viewpoint(viewpoint)

    logger.debug(
        "estimate_normals: %d of %d points valid, radius %g, max_nn %d",
        int(valid.sum()),
        points.shape[0],
        radius,
        max_nn,
    )
    with num_threads(n_jobs):
        neighbourhoods = search_tree(points[valid], radius, max_nn)
        valid_normals, valid_curvature = _normals_of(neighbourhoods, viewpoint)

    if valid.all():
        normals, curvature = valid_normals, valid_curvature
    else:
        normals = np.full((points.shape[0], 3), np.nan, np.float32)
        curvature = np.full(points.shape[0], np.nan, np.float32)
        normals[valid] = valid_normals
        curvature[valid] = valid_curvature
    if return_curvature:
        return normals, curvature
    return normals


def estimate_normals_organized(
    xyz: Any,
    radius: float,
    max_nn: int,
    viewpoint: Any = (0.0, 0.0, 0.0),
    *,
    search: str = "window",
    window: int | None = None,
    return_curvature: bool = False,
    n_jobs: int | None = None,
):
    """Estimate oriented normals of an organized cloud.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3), float32 or float64
        Organized cloud with NaN where no point was measured.
    radius, max_nn, viewpoint, return_curvature, n_jobs
        As in :func:`estimate_normals`.
    search : {"window", "tree"}, default "window"
        ``"tree"`` searches the valid points with the KD-tree, so the result equals
        ``estimate_normals`` on them. ``"window"`` looks only at the valid pixels of a
        ``(2 * window + 1)`` square around each pixel, then keeps those at distance
        ``< radius`` and of them the ``max_nn`` nearest.
    window : int, optional
        Half width of the image window, >= 1. ``None`` takes
        ``ceil(1.5 * radius / pitch)`` between 1 and 32, where the pitch is the smaller
        of the median horizontal and the median vertical distance between adjacent
        valid pixels (:func:`window_pitch`). Values above ``max(H, W)`` act as
        ``max(H, W)``. Ignored by ``search="tree"``.

    Returns
    -------
    normals : ndarray of shape (H, W, 3), float32
        NaN at pixels without a point.
    curvature : ndarray of shape (H, W), float32
        Only with ``return_curvature``.

    Notes
    -----
    The window search misses a neighbour only when it lies within ``radius`` in 3D but
    outside the window in the image. That happens where one pixel spans much less
    than the pitch, as on surfaces far nearer the camera than most of the scene. The
    share of pixels whose neighbourhood differs from the tree's is measured on real
    scans in ``docs/fpfh.md``.
    """
    xyz = check_organized(xyz, "xyz")
    radius, max_nn = _check_common(radius, max_nn)
    viewpoint = check_viewpoint(viewpoint)
    search, window = _check_search(search, window)
    height, width, _ = xyz.shape
    flat = xyz.reshape(-1, 3)
    valid = ~np.isnan(flat).any(axis=1)
    if not valid.any():
        raise ValueError(
            f"xyz must contain at least one valid point, but all {height * width} "
            "pixels contain NaN (missing points). Pass a cloud with finite coordinates."
        )

    if search == "tree":
        normals, curvature = estimate_normals(
            flat, radius, max_nn, viewpoint, return_curvature=True, n_jobs=n_jobs
        )
    else:
        half = resolve_window(xyz, radius, window)
        with num_threads(n_jobs):
            neighbourhoods = search_window(xyz, radius, max_nn, half)
            normals, curvature = _normals_of(neighbourhoods, viewpoint)

    normals = normals.reshape(height, width, 3)
    curvature = curvature.reshape(height, width)
    if return_curvature:
        return normals, curvature
    return normals
