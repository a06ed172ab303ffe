"""Patch features: per-point features pooled to a patch grid, and FPS patches.

Organized clouds follow the BTF pooling: a ``kernel x kernel`` average with stride 1
and no padding, then adaptive average pooling to the patch grid, as
``torch.nn.AvgPool2d(kernel, stride=1)`` followed by
``torch.nn.AdaptiveAvgPool2d(grid)``.
Unorganized clouds get patches of nearest neighbours around farthest-point-sampled
centres.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np

from ._kernels import _fps
from ._validation import (
    as_float_array,
    center_points,
    check_int,
    check_organized,
    check_points,
    largest_magnitude,
)
from .neighbors import KDTree

__all__ = [
    "farthest_point_sampling",
    "fps_patches",
    "organized_patch_points",
    "patch_boxes",
    "pool_patch_features",
    "scatter_to_map",
]

logger = logging.getLogger(__name__)

# Largest float64 block of the feature map converted at once, in elements.
_BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- checks


def _check_grid(grid: Any) -> tuple[int, int]:
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        grid = (grid, grid)
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise TypeError(
            f"grid must be an int or a pair of ints (rows, columns), but got {grid!r}."
        )
    rows = check_int(grid[0], "grid[0]", minimum=1)
    columns = check_int(grid[1], "grid[1]", minimum=1)
    return rows, columns


def _check_image_shape(image_shape: Any) -> tuple[int, int]:
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2:
        raise TypeError(
            f"image_shape must be a pair of ints (H, W), but got {image_shape!r}. "
            "For an (H, W, 3) cloud pass xyz.shape[:2]."
        )
    height = check_int(image_shape[0], "image_shape[0]", minimum=1)
    width = check_int(image_shape[1], "image_shape[1]", minimum=1)
    return height, width


def _check_pooling(
    image_shape: tuple[int, int], grid: Any, kernel: Any
) -> tuple[tuple[int, int], int]:
    """Check ``grid`` and ``kernel`` against an image shape and return them."""
    kernel = check_int(kernel, "kernel", minimum=1)
    grid = _check_grid(grid)
    if kernel > min(image_shape):
        raise ValueError(
            f"kernel={kernel} is larger than the image {image_shape}. Pass a kernel "
            f"of at most {min(image_shape)}."
        )
    pooled = (image_shape[0] - kernel + 1, image_shape[1] - kernel + 1)
    if grid[0] > pooled[0] or grid[1] > pooled[1]:
        raise ValueError(
            f"grid {grid} is larger than the {pooled} map left by a kernel={kernel} "
            f"average over a {image_shape} image. Pass a grid of at most {pooled}, "
            "or a smaller kernel."
        )
    return grid, kernel


# ------------------------------------------------------------------------- pooling


def _adaptive_bins(size: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the [start, end) of each adaptive pooling bin, as torch computes them."""
    i = np.arange(bins)
    start = (i * size) // bins
    end = -((-(i + 1) * size) // bins)
    return start, end


def _pooling_matrix(size: int, bins: int, kernel: int) -> np.ndarray:
    """Return the (bins, size) float64 weights of box average then adaptive average.

    Row ``i`` gives the weight of each input row (or column) in output bin ``i``.
    """
    pooled = size - kernel + 1
    positions = np.arange(pooled)
    inputs = np.arange(size)
    box = (inputs >= positions[:, None]) & (inputs < positions[:, None] + kernel)
    start, end = _adaptive_bins(pooled, bins)
    adaptive = (positions >= start[:, None]) & (positions < end[:, None])
    adaptive = adaptive / (end - start)[:, None]
    return adaptive @ (box / kernel)


def patch_boxes(image_shape: Any, grid: Any, kernel: int = 3) -> np.ndarray:
    """Compute the receptive field of each patch of :func:`pool_patch_features`.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)`` of the feature map.
    grid : int or (int, int)
        Patch grid ``(gh, gw)``. An int gives a square grid.
    kernel : int, default 3
        Side of the box average applied before the adaptive pooling.

    Returns
    -------
    ndarray of shape (gh * gw, 4), intp
        ``(y0, y1, x0, x1)`` per patch in row-major grid order, with the end
        exclusive: patch ``j`` averages pixels ``[y0:y1, x0:x1]``.

    Raises
    ------
    ValueError
        If the grid is larger than the pooled map or the kernel larger than the image.

    Examples
    --------
    >>> from zal3d_core.patches import patch_boxes
    >>> patch_boxes((224, 224), 28)[:2].tolist()
    [[0, 10, 0, 10], [0, 10, 7, 18]]
    """
    image_shape = _check_image_shape(image_shape)
    (rows, columns), kernel = _check_pooling(image_shape, grid, kernel)
    y_start, y_end = _adaptive_bins(image_shape[0] - kernel + 1, rows)
    x_start, x_end = _adaptive_bins(image_shape[1] - kernel + 1, columns)
    boxes = np.empty((rows, columns, 4), np.intp)
    boxes[..., 0] = y_start[:, None]
    boxes[..., 1] = y_end[:, None] + kernel - 1
    boxes[..., 2] = x_start[None, :]
    boxes[..., 3] = x_end[None, :] + kernel - 1
    return boxes.reshape(-1, 4)


def pool_patch_features(
    feature_map: Any, valid: Any, grid: Any = (28, 28), kernel: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Pool per-pixel features of an organized cloud into a patch grid.

    Features of invalid pixels are set to zero first, so NaN there never reaches the
    output. A ``kernel x kernel`` average with stride 1 and no padding follows, then
    adaptive average pooling to ``grid`` with torch's bins (bin ``i`` of ``n`` over
    ``m`` positions spans ``floor(i * m / n)`` to ``ceil((i + 1) * m / n)``). The
    result equals ``AdaptiveAvgPool2d(grid)(AvgPool2d(kernel, stride=1)(x))``.
    Invalid pixels count as zeros in the averages, as in that torch pipeline.

    Parameters
    ----------
    feature_map : array-like of shape (H, W, D), float
        Per-pixel features. Values at invalid pixels are ignored.
    valid : ndarray of shape (H, W), bool
        True where the pixel has a measured point, e.g. ``~np.isnan(xyz).any(axis=2)``.
    grid : int or (int, int), default (28, 28)
        Patch grid ``(gh, gw)``, and an int gives a square grid. At most the pooled map
        size ``(H - kernel + 1, W - kernel + 1)``.
    kernel : int, default 3
        Side of the box average.

    Returns
    -------
    features : ndarray of shape (gh * gw, D), float32
        Patch features in row-major grid order. Accumulated in float64.
    patch_valid : ndarray of shape (gh * gw,), bool
        True where the patch's receptive field (see :func:`patch_boxes`) contains at
        least one valid pixel.

    Raises
    ------
    ValueError
        If shapes do not match, a valid pixel has a NaN or infinite feature, a patch
        average exceeds the float32 range, the kernel is larger than the image, or
        the grid is larger than the pooled map.
    TypeError
        If ``valid`` is not boolean or ``feature_map`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.patches import pool_patch_features
    >>> features, patch_valid = pool_patch_features(
    ...     np.ones((224, 224, 33)), np.ones((224, 224), bool))
    >>> features.shape, patch_valid.all()
    ((784, 33), np.True_)
    """
    feature_map = as_float_array(feature_map, "feature_map")
    if feature_map.ndim != 3 or feature_map.shape[2] < 1:
        raise ValueError(
            f"feature_map must have shape (H, W, D), but got {feature_map.shape}. "
            "For (N, D) features of valid points, place them with scatter_to_map first."
        )
    height, width, depth = feature_map.shape
    if not isinstance(valid, np.ndarray) or valid.dtype != np.bool_:
        raise TypeError(
            f"valid must be a boolean ndarray, but got "
            f"{getattr(valid, 'dtype', type(valid).__name__)}. Pass e.g. "
            "~np.isnan(xyz).any(axis=2)."
        )
    if valid.shape != (height, width):
        raise ValueError(
            f"valid must have the shape {(height, width)} of feature_map's first two "
            f"axes, but got {valid.shape}."
        )
    (rows, columns), kernel = _check_pooling((height, width), grid, kernel)

    block = max(1, _BLOCK_ELEMENTS // (height * width))
    non_finite = np.zeros((height, width), dtype=bool)
    for first in range(0, depth, block):
        non_finite |= ~np.isfinite(feature_map[:, :, first : first + block]).all(axis=2)
    non_finite &= valid
    if non_finite.any():
        count = int(non_finite.sum())
        raise ValueError(
            f"feature_map contains NaN or infinite values in {count} of the "
            f"{int(valid.sum())} valid pixels. Fix the features there, or mark those "
            "pixels False in valid."
        )

    row_weights = _pooling_matrix(height, rows, kernel)
    column_weights = _pooling_matrix(width, columns, kernel)
    features = np.empty((rows, columns, depth), np.float32)
    for first in range(0, depth, block):
        part = feature_map[:, :, first : first + block]
        part = np.where(valid[:, :, None], part, 0.0).astype(np.float64, copy=False)
        # Separable weights: rows first (H -> gh), then columns (W -> gw).
        by_rows = np.tensordot(row_weights, part, axes=(1, 0))
        pooled = np.tensordot(by_rows, column_weights, axes=(1, 1))
        with np.errstate(over="ignore"):  # checked below
            features[:, :, first : first + block] = pooled.transpose(0, 2, 1)
    if not np.isfinite(features).all():
        # Finite float64 features whose averages exceed the float32 output range.
        raise ValueError(
            "feature_map has values at valid pixels whose patch averages exceed the "
            f"float32 range (3.4e38), up to {largest_magnitude(feature_map):.3g} in "
            "magnitude. Rescale the features."
        )

    counts = np.zeros((height + 1, width + 1), np.int64)
    counts[1:, 1:] = valid.cumsum(axis=0).cumsum(axis=1)
    y0, y1, x0, x1 = patch_boxes((height, width), (rows, columns), kernel).T
    in_box = counts[y1, x1] - counts[y0, x1] - counts[y1, x0] + counts[y0, x0]
    logger.debug(
        "pooled a %s x %d feature map to a %d x %d grid, %d of %d patches valid",
        (height, width),
        depth,
        rows,
        columns,
        int((in_box > 0).sum()),
        in_box.size,
    )
    return features.reshape(rows * columns, depth), in_box > 0


# ------------------------------------------------------------------------- scatter


def scatter_to_map(
    values: Any, flat_index: Any, image_shape: Any, fill: float = 0.0
) -> np.ndarray:
    """Place per-point values back into the pixel grid of an organized cloud.

    Parameters
    ----------
    values : array-like of shape (N, D) or (N,)
        One row per point.
    flat_index : array-like of shape (N,), int
        Pixel of each point as an index into ``xyz.reshape(-1, 3)``, as returned by
        ``zal3d_core.io.flatten_organized``. Each pixel may appear once.
    image_shape : (int, int)
        ``(H, W)`` of the organized cloud.
    fill : float, default 0.0
        Value of pixels without a point. NaN marks them as missing.

    Returns
    -------
    ndarray of shape (H, W, D), or (H, W) for 1-D ``values``
        Float32 or float64 as ``values`` (integers become float64).

    Raises
    ------
    ValueError
        If lengths differ, an index is outside ``[0, H * W)`` or repeats.
    TypeError
        If ``flat_index`` is not an integer array or ``fill`` is not a real number.

    Examples
    --------
    >>> from zal3d_core.patches import scatter_to_map
    >>> scatter_to_map([1.0, 2.0], [0, 3], (2, 2), fill=-1.0).tolist()
    [[1.0, -1.0], [-1.0, 2.0]]
    """
    values = as_float_array(values, "values")
    if values.ndim not in (1, 2):
        raise ValueError(
            f"values must have shape (N, D) or (N,), but got {values.shape}."
        )
    height, width = _check_image_shape(image_shape)
    index = np.asarray(flat_index)
    if index.dtype == np.bool_ or not np.issubdtype(index.dtype, np.integer):
        raise TypeError(
            f"flat_index must be an integer array, but got dtype {index.dtype}. For a "
            "boolean pixel mask, pass np.flatnonzero(mask)."
        )
    if index.ndim != 1 or index.size != values.shape[0]:
        raise ValueError(
            f"flat_index must have shape ({values.shape[0]},) to match values, but got "
            f"{index.shape}."
        )
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f"fill must be a real number, but got {fill!r}.")
    n_pixels = height * width
    if index.size:
        if index.min() < 0 or index.max() >= n_pixels:
            raise ValueError(
                f"flat_index must lie in [0, {n_pixels}) for image_shape "
                f"{(height, width)}, but got values from {index.min()} to "
                f"{index.max()}."
            )
        index = index.astype(np.intp, copy=False)
        hits = np.bincount(index, minlength=n_pixels)
        if hits.max() > 1:
            raise ValueError(
                f"flat_index repeats {int((hits > 1).sum())} pixels, so their values "
                "would overwrite each other. Pass each pixel at most once."
            )

    out = np.full((n_pixels, *values.shape[1:]), fill, dtype=values.dtype)
    out[index] = values
    return out.reshape(height, width, *values.shape[1:])


# ---------------------------------------------------------------------------- FPS


def farthest_point_sampling(points: Any, n_samples: int, start: int = 0) -> np.ndarray:
    """Select well-spread points by farthest point sampling.

    Each pick after ``start`` is the point farthest (Euclidean) from all earlier picks.
    Among equal distances the lowest index wins, so the result is deterministic.
    Distances are computed in float64 on coordinates centred first. Runs in
    O(N * n_samples) time with O(N) extra memory.

    Parameters
    ----------
    points : array-like of shape (n_points, n_dims)
        Finite coordinates. Drop NaN rows first.
    n_samples : int
        Number of picks, in ``[0, n_points]``.
    start : int, default 0
        Index of the first pick.

    Returns
    -------
    ndarray of shape (n_samples,), intp
        Distinct indices into ``points``, in pick order.

    Raises
    ------
    ValueError
        If ``n_samples`` exceeds the number of points, ``start`` is out of range, or
        ``points`` contains NaN or inf.

    Examples
    --------
    >>> from zal3d_core.patches import farthest_point_sampling
    >>> farthest_point_sampling([[0.0, 0], [1, 0], [5, 0], [2, 0]], 3).tolist()
    [0, 2, 3]
    """
    points = check_points(points, "points", dim=None)
    n = points.shape[0]
    n_samples = check_int(n_samples, "n_samples", minimum=0)
    if n_samples > n:
        raise ValueError(
            f"n_samples={n_samples} is larger than the number of points ({n}). Pass "
            f"n_samples <= {n}."
        )
    start = check_int(start, "start", minimum=0)
    if start >= n:
        raise ValueError(f"start must be in [0, {n}), but got {start}.")
    centred, _ = center_points(points)
    return _fps.farthest_point_sampling(np.ascontiguousarray(centred), n_samples, start)


def fps_patches(
    points: Any, n_patches: int, patch_size: int, *, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Group an unorganized cloud into patches around farthest-point-sampled centres.

    Parameters
    ----------
    points : array-like of shape (n_points, 3)
        Finite coordinates. Drop NaN rows first.
    n_patches : int
        Number of centres, in ``[0, n_points]``.
    patch_size : int
        Points per patch, in ``[1, n_points]``.
    start : int, default 0
        Index of the first centre.

    Returns
    -------
    centers : ndarray of shape (n_patches,), intp
        Indices of the centres, in the order of :func:`farthest_point_sampling`.
    neighbors : ndarray of shape (n_patches, patch_size), intp
        The ``patch_size`` nearest points of each centre, by distance, the centre
        included. Equal distances come in index order, so a duplicate of the centre
        with a lower index comes before it.

    Raises
    ------
    ValueError
        If ``n_patches`` or ``patch_size`` exceeds the number of points.
    """
    points = check_points(points, "points", dim=3)
    n = points.shape[0]
    n_patches = check_int(n_patches, "n_patches", minimum=0)
    patch_size = check_int(patch_size, "patch_size", minimum=1)
    if n_patches > n:
        raise ValueError(
            f"n_patches={n_patches} is larger than the number of points ({n}). Pass "
            f"n_patches <= {n}."
        )
    if patch_size > n:
        raise ValueError(
            f"patch_size={patch_size} is larger than the number of points ({n}). Pass "
            f"patch_size <= {n}."
        )
    centers = farthest_point_sampling(points, n_patches, start)
    if n_patches == 0:
        return centers, np.zeros((0, patch_size), np.intp)
    _, neighbors = KDTree(points).query(points[centers], k=patch_size)
    logger.debug(
        "built %d FPS patches of %d points from %d points", n_patches, patch_size, n
    )
    return centers, np.ascontiguousarray(neighbors, dtype=np.intp)


def organized_patch_points(
    xyz: Any, grid: Any = 28, kernel: int = 3, n_points: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Collect a fixed-size point set per patch of an organized cloud.

    Patch ``j`` takes the valid points of its receptive field
    (:func:`patch_boxes`), so the point sets line up with the rows of
    :func:`pool_patch_features`. A field with more than ``n_points`` valid points is
    thinned to ``n_points`` evenly spaced ones in raster order; one with fewer repeats
    its points cyclically. Each set is centred on its mean (in float64, then cast).

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud with NaN where no point was measured.
    grid : int or (int, int), default 28
    kernel : int, default 3
    n_points : int, default 64
        Points per patch, >= 1.

    Returns
    -------
    points : ndarray of shape (gh * gw, n_points, 3), float32
        Centred point sets; all zeros for patches without a valid point.
    counts : ndarray of shape (gh * gw,), intp
        Number of distinct valid points each patch had before thinning or repeating.
    """
    xyz = check_organized(xyz, "xyz")
    n_points = check_int(n_points, "n_points", minimum=1)
    boxes = patch_boxes(xyz.shape[:2], grid, kernel)
    out = np.zeros((boxes.shape[0], n_points, 3), np.float32)
    counts = np.zeros(boxes.shape[0], np.intp)
    valid = ~np.isnan(xyz).any(axis=2)
    for j, (y0, y1, x0, x1) in enumerate(boxes):
        inside = valid[y0:y1, x0:x1]
        count = int(inside.sum())
        counts[j] = count
        if count == 0:
            continue
        points = np.asarray(xyz[y0:y1, x0:x1][inside], np.float64)
        if count >= n_points:
            pick = np.round(np.linspace(0, count - 1, n_points)).astype(np.intp)
        else:
            pick = np.arange(n_points) % count
        chosen = points[pick]
        out[j] = chosen - chosen.mean(axis=0)
    return out, counts
