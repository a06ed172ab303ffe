"""Pseudo-anomaly synthesis on normal scans, the training data of the 3DzAL branch.

3DzAL (Wang, Peng and Fu, "Towards Zero-shot 3D Anomaly Localization", WACV 2025)
trains its patch encoder and normalcy classifier on pseudo anomalies made from normal
scans of the training class. Anchors are picked where an untrained ResNet-50 fed the
xyz map responds most (``zal3d_torch.resnet.inductive_bias_map`` with
:func:`select_anchors`) or at random (:func:`random_anchors`). The KD-tree
neighbourhood of an anchor is then either removed ("removing") or covered by a
shifted patch of unrelated surface ("adding"). The authors published no code, so each
open choice is documented where it is made and exposed as a parameter.

Two levels of API:

- Unorganized ``(N, 3)`` clouds: :func:`removing_anomaly`, :func:`adding_anomaly`,
  :func:`make_patch` and :func:`synthesize_patches`, which returns fixed-size labelled
  patches.
- Organized ``(H, W, 3)`` clouds with NaN for missing points, which go through the same
  feature extraction as the test scans: :func:`synthesize_organized`, with
  :func:`fit_camera` and :class:`CameraModel` to draw added points into the pixel grid.

"Adding" patches are cut from procedural shapes (:mod:`zal3d_core.shapes`) unless the
caller passes other clouds. Never pass scans of other classes of an evaluation set,
because the training data would then contain the test classes.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._kernels import _synthesis
from ._validation import (
    as_float_array,
    check_int,
    check_organized,
    check_points,
    check_positive,
    check_rng,
)
from .neighbors import KDTree
from .shapes import sample_random_shape

__all__ = [
    "CameraModel",
    "adding_anomaly",
    "fit_camera",
    "make_patch",
    "random_anchors",
    "removing_anomaly",
    "select_anchors",
    "synthesize_organized",
    "synthesize_patches",
]

logger = logging.getLogger(__name__)

PATCH_KINDS = ("both", "adding", "removing")
ORGANIZED_KINDS = ("adding", "removing")

# The centroid of an added patch sits between 0.1 and 0.5 patch radii above the
# anchor along its normal. The patch is as wide as the neighbourhood it covers, so
# such a bump clearly leaves the surface but stays attached to it.
DEFAULT_OFFSET = (0.1, 0.5)

# Procedural source shapes have at least this many points, so that a k-point
# neighbourhood of the top point is a small cap of the shape and not the whole shape.
MIN_SOURCE_POINTS = 2048

# A gap pixel is filled when drawn pixels surround it in 3 of the 4 quadrants.
FILL_QUADRANTS = 3
MAX_FILL_RADIUS = 16

# Reprojection error (pixels) above which the camera fit is reported as poor. A scan
# resized with nearest-neighbour interpolation already has an RMS error near 0.7 px
# (each pixel keeps the point of the nearest source pixel), so that stays quiet.
CAMERA_WARN_RMS = 1.5


# ---------------------------------------------------------------------------------
# Argument checks


def _check_kind(kind: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(kind, str) or kind not in allowed:
        known = ", ".join(repr(name) for name in allowed)
        raise ValueError(f"kind must be one of {known}, but got {kind!r}.")
    return kind


def _check_index(value: Any, name: str, n: int) -> int:
    index = check_int(value, name)
    if not 0 <= index < n:
        raise ValueError(
            f"{name} must be a point index in [0, {n - 1}], but got {index}."
        )
    return index


def _check_fraction(fraction: Any) -> float:
    fraction = check_positive(fraction, "fraction")
    if fraction > 1.0:
        raise ValueError(
            f"fraction must be in (0, 1], but got {fraction}. It is the share of the "
            "k nearest points that is removed."
        )
    return fraction


def _check_offset(offset: Any) -> tuple[float, float]:
    if isinstance(offset, (str, bytes)) or not hasattr(offset, "__len__"):
        raise TypeError(f"offset must be a pair (lo, hi) of numbers, but got {offset!r}.")
    values = list(offset)
    if len(values) != 2 or not all(
        isinstance(value, numbers.Real) and not isinstance(value, bool)
        for value in values
    ):
        raise ValueError(
            f"offset must be a pair (lo, hi) of real numbers, but got {offset!r}."
        )
    lo, hi = float(values[0]), float(values[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"offset must be finite with lo <= hi, but got {offset!r}. It is the range "
            "of the shift along the normal, in patch radii, e.g. (0.1, 0.5)."
        )
    return lo, hi


def _check_direction(direction: Any) -> np.ndarray:
    array = as_float_array(direction, "direction").astype(np.float64)
    norm = float(np.linalg.norm(array)) if array.shape == (3,) else 0.0
    if array.shape != (3,) or not np.isfinite(array).all() or norm == 0.0:
        raise ValueError(
            f"direction must be a finite nonzero 3-vector, but got {direction!r}."
        )
    return array / norm


def _check_unit_normal(normal: np.ndarray, name: str) -> np.ndarray:
    normal = np.asarray(normal, dtype=np.float64)
    norm = float(np.linalg.norm(normal)) if np.isfinite(normal).all() else 0.0
    if norm == 0.0:
        raise ValueError(
            f"{name} must be a finite nonzero vector, but got {normal.tolist()}. "
            "Estimate normals first, or choose an anchor with a defined normal."
        )
    return normal / norm


def _check_normals_array(normals: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = as_float_array(normals, name)
    if array.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape}, one normal per point, but got "
            f"{array.shape}."
        )
    return array


def _check_source(source: Any, name: str) -> np.ndarray:
    array = as_float_array(source, name)
    if array.ndim == 2 and array.shape[0] == 0:
        raise ValueError(
            f"{name} must contain at least one point, but got an empty array of shape "
            f"{array.shape}. Pass a non-empty cloud, or source=None to cut patches "
            "from procedural shapes."
        )
    return np.asarray(check_points(array, name), dtype=np.float64)


def _check_source_size(source: np.ndarray, k: int, name: str) -> None:
    if k > source.shape[0]:
        raise ValueError(
            f"k={k} is larger than the number of points in {name} "
            f"({source.shape[0]}). Pass k <= {source.shape[0]} or a denser source."
        )


def _check_point_anchors(anchors: Any, n: int) -> np.ndarray:
    array = np.asarray(anchors)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"anchors must be a non-empty 1-D array of point indices, but got shape "
            f"{array.shape}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"anchors must contain integer point indices, but got dtype {array.dtype}."
        )
    bad = (array < 0) | (array >= n)
    if bad.any():
        raise ValueError(
            f"anchors must be point indices in [0, {n - 1}], but got "
            f"{array[bad][:5].tolist()}."
        )
    return array.astype(np.intp)


def _check_pixel_anchors(anchors: Any, valid: np.ndarray) -> np.ndarray:
    height, width = valid.shape
    array = np.asarray(anchors)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"anchors must be a non-empty 1-D array of flat pixel indices, but got "
            f"shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"anchors must contain integer flat pixel indices (row * W + col), but got "
            f"dtype {array.dtype}."
        )
    outside = (array < 0) | (array >= height * width)
    if outside.any():
        raise ValueError(
            f"anchors must be flat pixel indices in [0, {height * width - 1}], but got "
            f"{array[outside][:5].tolist()}."
        )
    invalid = ~valid.reshape(-1)[array]
    if invalid.any():
        pixels = [divmod(int(flat), width) for flat in array[invalid][:5]]
        raise ValueError(
            f"anchors must be valid pixels, but {int(invalid.sum())} are missing "
            f"points (NaN xyz), e.g. flat index {int(array[invalid][0])} at (row, col) "
            f"{pixels[0]}. Pick anchors with select_anchors or random_anchors."
        )
    return array.astype(np.intp)


def _check_valid_mask(valid: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    array = np.asarray(valid)
    if array.dtype != np.bool_:
        raise TypeError(
            f"valid must be a bool array, but got dtype {array.dtype}. Pass for "
            "example ~np.isnan(xyz).any(axis=2)."
        )
    if array.ndim != 2 or (shape is not None and array.shape != shape):
        expected = shape if shape is not None else "(H, W)"
        raise ValueError(f"valid must have shape {expected}, but got {array.shape}.")
    return array


# ---------------------------------------------------------------------------------
# Geometry helpers


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the rotation that turns unit vector ``a`` into unit vector ``b``."""
    cross = np.cross(a, b)
    cosine = float(a @ b)
    if cosine < -1.0 + 1e-12:
        # Opposite vectors: turn by pi about any axis perpendicular to a.
        helper = np.eye(3)[int(np.argmin(np.abs(a)))]
        axis = np.cross(a, helper)
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    skew = np.array(
        [[0.0, -cross[2], cross[1]], [cross[2], 0.0, -cross[0]], [-cross[1], cross[0], 0.0]]
    )
    return np.eye(3) + skew + skew @ skew / (1.0 + cosine)


def _rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Return the rotation by ``angle`` radians about unit vector ``axis``."""
    x, y, z = axis
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return (
        math.cos(angle) * np.eye(3)
        + math.sin(angle) * skew
        + (1.0 - math.cos(angle)) * np.outer(axis, axis)
    )


def _removed_count(k: int, fraction: float) -> int:
    return max(1, min(k, math.floor(fraction * k + 0.5)))


def _removal_mask(
    tree: KDTree,
    points: np.ndarray,
    anchors_xyz: np.ndarray,
    k: int,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mark the points removed around each anchor (see ``_synthesis.removal_mask``)."""
    n_remove = _removed_count(k, fraction)
    if n_remove < k:
        centre_ranks = rng.integers(0, k, size=len(anchors_xyz)).astype(np.intp)
    else:
        centre_ranks = np.zeros(len(anchors_xyz), np.intp)
    centred = np.ascontiguousarray(np.asarray(points, np.float64) - tree.center)
    queries = np.ascontiguousarray(np.asarray(anchors_xyz, np.float64) - tree.center)
    return _synthesis.removal_mask(tree.tree, centred, queries, k, n_remove, centre_ranks)


def _neighbourhood_size(tree: KDTree, centre: np.ndarray, k: int) -> tuple[float, float]:
    """Return the radius and RMS radius of the ``k`` nearest tree points of ``centre``.

    The radius is the distance to the ``k``-th nearest point, and the RMS radius the
    root-mean-square distance of the ``k`` nearest. With ``k = 1`` the nearest point is
    the anchor itself, so the 2 nearest are used.
    """
    count = min(max(k, 2), tree.n)
    distances, _ = tree.query(centre, count)
    distances = np.atleast_1d(distances)
    radius = float(distances[-1])
    if radius <= 0.0:
        raise ValueError(
            f"the {count} nearest points of the anchor all coincide with it, so the "
            "patch has zero size. Pass a larger k or remove duplicate points."
        )
    return radius, float(np.sqrt(np.mean(distances * distances)))


def _adding_patch(
    source: np.ndarray,
    k: int,
    direction: np.ndarray,
    anchor: np.ndarray,
    normal: np.ndarray,
    scale: tuple[float, float],
    offset: tuple[float, float],
    spin: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Cut, scale, orient and place one "adding" patch; return its (k, 3) points.

    ``scale`` is ``(radius, rms_radius)`` of the covered neighbourhood, already
    multiplied by the caller's ``size``. The patch is the ``k`` nearest source points
    of the source point that reaches furthest along ``direction`` (the lowest index
    among equals). It is centred on its centroid and scaled so that its RMS distance
    from the centroid is ``rms_radius``. The RMS radius is used instead of the farthest
    point, because the ragged rim of a k-nearest cut would otherwise set the size.
    The rotation turns ``direction`` onto ``normal``, so the outside of the source
    shape faces the same way as the outside of the scan. With ``spin`` a random turn
    about the normal follows. The centroid lands at ``anchor + t * radius * normal``
    with ``t`` uniform in ``offset``.
    """
    radius, rms_radius = scale
    top = int(np.argmax(source @ direction))
    _, indices = KDTree(source).query(source[top], k)
    patch = source[np.atleast_1d(indices)]
    patch = patch - patch.mean(axis=0)
    extent = float(np.sqrt(np.mean((patch * patch).sum(axis=1))))
    if extent > 0.0:
        patch *= rms_radius / extent
    elif k > 1:
        raise ValueError(
            f"the {k} source points around the source's top point all coincide, so "
            "the patch has zero size. Pass a larger k or a source without duplicates."
        )
    rotation = _rotation_between(direction, normal)
    if spin:
        rotation = _rotation_about(normal, rng.uniform(0.0, 2.0 * math.pi)) @ rotation
    patch = patch @ rotation.T
    shift = rng.uniform(offset[0], offset[1]) if offset[1] > offset[0] else offset[0]
    return anchor + shift * radius * normal + patch


def _resolve_sources(
    source: Any, count: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Return one source cloud per "adding" anchor, each with at least ``k`` points.

    ``None`` draws a new procedural shape per anchor. One array is used for every
    anchor. A list or tuple of arrays gives each anchor a randomly chosen member.
    """
    if count == 0:
        return []
    if source is None:
        n_points = max(MIN_SOURCE_POINTS, 4 * k)
        return [sample_random_shape(n_points, seed=rng) for _ in range(count)]
    is_list = isinstance(source, (list, tuple)) and (
        len(source) == 0 or all(np.ndim(member) == 2 for member in source)
    )
    if not is_list:
        cloud = _check_source(source, "source")
        _check_source_size(cloud, k, "source")
        return [cloud] * count
    if len(source) == 0:
        raise ValueError(
            "source must contain at least one cloud, but got an empty list. Pass "
            "source=None to cut patches from procedural shapes."
        )
    clouds = [_check_source(member, f"source[{i}]") for i, member in enumerate(source)]
    for i, cloud in enumerate(clouds):
        _check_source_size(cloud, k, f"source[{i}]")
    choices = rng.integers(0, len(clouds), size=count)
    return [clouds[int(choice)] for choice in choices]


def _patch_from_candidates(
    candidates: np.ndarray, centre: np.ndarray, n_points: int, rng: np.random.Generator
) -> np.ndarray:
    """Return the ``n_points`` candidates nearest ``centre``, minus ``centre``, as float32.

    Candidates at equal distance keep their order. With fewer candidates than
    ``n_points`` the patch is padded with copies of randomly chosen candidates, so
    every patch has the same row count and only points of the patch itself.
    """
    relative = np.asarray(candidates, np.float64) - centre
    order = np.argsort((relative * relative).sum(axis=1), kind="stable")[:n_points]
    if len(order) < n_points:
        extra = rng.integers(0, len(order), size=n_points - len(order))
        order = np.concatenate([order, order[extra]])
    return relative[order].astype(np.float32)


# ---------------------------------------------------------------------------------
# Unorganized clouds


def removing_anomaly(
    points: Any, anchor_index: int, k: int, *, fraction: float = 1.0, seed: Any = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the k-nearest neighbourhood of an anchor point, leaving a hole.

    Parameters
    ----------
    points : array-like of shape (n_points, 3)
        Finite coordinates, float32 or float64.
    anchor_index : int
        Index of the anchor point.
    k : int
        Size of the neighbourhood (the anchor included), ``1 <= k < n_points``.
    fraction : float, default 1.0
        Share of the neighbourhood to remove, in ``(0, 1]``. Below 1 the
        ``round(fraction * k)`` points (at least 1) nearest to a centre drawn at random
        among the ``k`` neighbours are removed. A random subset would thin the
        surface instead of cutting a hole, and this choice keeps the hole compact
        while its position inside the neighbourhood varies with the seed.
    seed : int or np.random.Generator, default 0
        Only used when ``fraction < 1``.

    Returns
    -------
    new_points : ndarray of shape (n_points - n_removed, 3)
        The remaining points in their original order, in the input dtype.
    removed_mask : ndarray of shape (n_points,), bool
        True for the removed points.

    Raises
    ------
    ValueError
        If ``k`` would remove every point, ``anchor_index`` is out of range or
        ``fraction`` is outside ``(0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.column_stack([np.arange(6.0), np.zeros(6), np.zeros(6)])
    >>> new_points, removed = removing_anomaly(points, 0, 2)
    >>> removed.tolist()
    [True, True, False, False, False, False]
    """
    array = check_points(points, "points", min_points=2)
    n = array.shape[0]
    anchor_index = _check_index(anchor_index, "anchor_index", n)
    k = check_int(k, "k", minimum=1)
    if k >= n:
        raise ValueError(
            f"k={k} would remove all {n} points. Pass k < {n}, so that at least one "
            "point remains."
        )
    fraction = _check_fraction(fraction)
    rng = check_rng(seed)

    tree = KDTree(array)
    mask = _removal_mask(tree, array, array[anchor_index][None], k, fraction, rng)
    return array[~mask], mask


def adding_anomaly(
    points: Any,
    normals: Any,
    anchor_index: int,
    source_points: Any,
    k: int,
    *,
    offset: Sequence[float] = DEFAULT_OFFSET,
    size: float = 1.0,
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    spin: bool = True,
    seed: Any = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Attach a patch of foreign surface on top of an anchor point.

    The steps, each an open choice of the method:

    1. Cut: the ``k`` nearest points of the source point furthest along ``direction``
       (the largest z by default). Procedural shapes are randomly rotated, so this
       point falls on a random part of the shape.
    2. Scale: the patch is centred on its centroid and scaled so that the RMS
       distance of its points from the centroid is ``size`` times the RMS distance of
       the anchor's ``k`` nearest points of ``points`` from the anchor. With
       ``size = 1`` the patch then has the same point count over about the same area
       as the surface it covers, so its point spacing matches the local spacing of
       the scan.
    3. Orient: a rotation turns ``direction`` onto the anchor's normal, and with
       ``spin`` a random turn about the normal follows.
    4. Shift: the centroid lands at ``anchor + t * size * r * normal``, with ``t``
       drawn uniformly from ``offset`` and ``r`` the distance from the anchor to its
       ``k``-th nearest point (the 2nd for ``k = 1``, since the nearest is the anchor
       itself).

    Parameters
    ----------
    points : array-like of shape (n_points, 3)
        Finite coordinates, float32 or float64.
    normals : array-like of shape (n_points, 3)
        Normals of ``points``, pointing out of the surface (toward the sensor). Only
        the anchor's normal is used, and it must be finite and nonzero.
    anchor_index : int
        Index of the anchor point.
    source_points : array-like of shape (n_source, 3)
        The foreign surface, for example :func:`zal3d_core.shapes.sample_random_shape`.
    k : int
        Number of added points, ``1 <= k <= n_source``.
    offset : pair of float, default (0.1, 0.5)
        Range ``(lo, hi)`` of the shift along the normal, in patch radii.
        ``lo == hi`` gives a fixed shift, and negative values sink the patch.
    size : float, default 1.0
        Patch size relative to the covered neighbourhood, > 0.
    direction : array-like of shape (3,), default (0, 0, 1)
        Direction in which the source's top point is sought. It is also the outward
        direction of the cut patch.
    spin : bool, default True
        Turn the patch by a random angle about the normal.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    new_points : ndarray of shape (n_points + k, 3)
        ``points`` followed by the added points, in the input dtype.
    added_mask : ndarray of shape (n_points + k,), bool
        True for the added points (the last ``k`` rows).

    Raises
    ------
    ValueError
        If ``source_points`` is empty or has fewer than ``k`` points, the anchor's
        normal is not finite and nonzero, or ``offset`` is not a finite ``lo <= hi``.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.shapes import sample_sphere
    >>> grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    >>> points = np.column_stack([grid, np.zeros(100)])
    >>> normals = np.tile([0.0, 0.0, 1.0], (100, 1))
    >>> new_points, added = adding_anomaly(points, normals, 55, sample_sphere(500), 9)
    >>> new_points.shape, int(added.sum())
    ((109, 3), 9)
    """
    array = check_points(points, "points", min_points=1)
    n = array.shape[0]
    anchor_index = _check_index(anchor_index, "anchor_index", n)
    normals = _check_normals_array(normals, (n, 3), "normals")
    normal = _check_unit_normal(normals[anchor_index], "normals[anchor_index]")
    source = _check_source(source_points, "source_points")
    k = check_int(k, "k", minimum=1)
    _check_source_size(source, k, "source_points")
    offset = _check_offset(offset)
    size = check_positive(size, "size")
    direction = _check_direction(direction)
    rng = check_rng(seed)

    tree = KDTree(array)
    anchor = np.asarray(array[anchor_index], np.float64)
    scale = tuple(size * value for value in _neighbourhood_size(tree, anchor, k))
    patch = _adding_patch(source, k, direction, anchor, normal, scale, offset, spin, rng)
    new_points = np.concatenate([array, patch.astype(array.dtype)])
    added_mask = np.zeros(n + k, dtype=bool)
    added_mask[n:] = True
    return new_points, added_mask


def make_patch(
    points: Any, centre_index: int, n_points: int, *, seed: Any = 0
) -> np.ndarray:
    """Cut a fixed-size patch: the ``n_points`` nearest points of a centre point.

    Parameters
    ----------
    points : array-like of shape (n, 3)
        Finite coordinates.
    centre_index : int
        Index of the centre point.
    n_points : int
        Rows of the patch, >= 1. When the cloud has fewer points, the patch is padded
        with copies of randomly chosen patch points, so it only repeats real points.
    seed : int or np.random.Generator, default 0
        Only used for padding.

    Returns
    -------
    patch : ndarray of shape (n_points, 3), float32
        Coordinates minus the centre point (computed in float64), nearest first.
        Points at equal distance come in index order.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.array([[0.0, 0, 0], [1, 0, 0], [3, 0, 0]])
    >>> make_patch(points, 1, 2)[:, 0].tolist()
    [0.0, -1.0]
    """
    array = check_points(points, "points", min_points=1)
    centre_index = _check_index(centre_index, "centre_index", array.shape[0])
    n_points = check_int(n_points, "n_points", minimum=1)
    rng = check_rng(seed)

    tree = KDTree(array)
    centre = np.asarray(array[centre_index], np.float64)
    _, indices = tree.query(centre, min(n_points, tree.n))
    return _patch_from_candidates(array[np.atleast_1d(indices)], centre, n_points, rng)


def synthesize_patches(
    points: Any,
    normals: Any,
    anchors: Any,
    *,
    kind: str = "both",
    source: Any = None,
    n_points: int = 64,
    k: int | None = None,
    fraction: float = 1.0,
    offset: Sequence[float] = DEFAULT_OFFSET,
    size: float = 1.0,
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    spin: bool = True,
    normal_at_anchors: float = 0.5,
    seed: Any = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make labelled training patches: one pseudo anomaly per anchor and as many normal.

    Each anchor gets its own anomaly on the unmodified cloud, so a patch never shows
    the anomaly of another anchor. The anomaly patch contains the ``n_points`` points
    nearest to the anchor's position after the change, minus that position. The normal
    patches come from the unmodified cloud and match the anomaly patches in number. A
    share ``normal_at_anchors`` of them sits at randomly chosen anchors, so the
    classifier sees the same places with and without a change and cannot learn the
    place instead of the change. The rest sit at random points that are not anchors.

    Parameters
    ----------
    points : array-like of shape (n, 3)
        Finite coordinates of a normal scan.
    normals : array-like of shape (n, 3) or None
        Outward normals, needed when ``kind`` is "adding" or "both".
    anchors : array-like of int, shape (A,)
        Point indices of the anchors.
    kind : {"both", "adding", "removing"}, default "both"
        With "both" the anchors alternate, starting with "removing", so the two
        kinds stay balanced for any order of anchors.
    source : array-like of shape (n_source, 3), list of them, or None
        Clouds to cut "adding" patches from. ``None`` draws a procedural shape per
        anchor (:func:`zal3d_core.shapes.sample_random_shape`, at least 2048 points).
        A list gives each anchor a randomly chosen member.
    n_points : int, default 64
        Rows of every patch.
    k : int, optional
        Points removed or added per anomaly. The default ``n_points // 2`` lets the
        anomaly fill about half of the patch, so the patch also shows the normal
        surface around it.
    fraction : float, default 1.0
        Share of the ``k`` neighbours that "removing" takes out (see
        :func:`removing_anomaly`).
    offset, size, direction, spin
        Placement of "adding" patches (see :func:`adding_anomaly`).
    normal_at_anchors : float, default 0.5
        Share of the normal patches centred on anchors, in ``[0, 1]``.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    patches : ndarray of shape (2 * A, n_points, 3), float32
        The A pseudo-anomaly patches in anchor order, then the A normal patches:
        first those at anchors (in anchor order), then those at random points.
    labels : ndarray of shape (2 * A,), int8
        1 for a pseudo anomaly, 0 for a normal patch.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``normals`` is missing for "adding", an anchor is out
        of range, ``k`` would remove every point or exceeds a source cloud, or a
        parameter is out of its range.
    """
    array = check_points(points, "points", min_points=2)
    n = array.shape[0]
    kind = _check_kind(kind, PATCH_KINDS)
    anchors = _check_point_anchors(anchors, n)
    n_points = check_int(n_points, "n_points", minimum=1)
    k = max(1, n_points // 2) if k is None else check_int(k, "k", minimum=1)
    fraction = _check_fraction(fraction)
    offset = _check_offset(offset)
    size = check_positive(size, "size")
    direction = _check_direction(direction)
    normal_at_anchors = check_positive(normal_at_anchors, "normal_at_anchors", allow_zero=True)
    if normal_at_anchors > 1.0:
        raise ValueError(
            f"normal_at_anchors must be in [0, 1], but got {normal_at_anchors}."
        )
    if kind == "both":
        kinds = ["removing" if i % 2 == 0 else "adding" for i in range(len(anchors))]
    else:
        kinds = [kind] * len(anchors)
    n_adding = kinds.count("adding")
    if "removing" in kinds and k >= n:
        raise ValueError(
            f"k={k} would remove all {n} points. Pass k < {n}, so that at least one "
            "point remains."
        )
    if n_adding:
        if normals is None:
            raise ValueError(
                f"normals are needed for kind={kind!r}, because added patches are "
                "oriented along the anchor's normal. Pass normals of shape "
                f"({n}, 3), or kind='removing'."
            )
        normals = _check_normals_array(normals, (n, 3), "normals")
    rng = check_rng(seed)
    sources = _resolve_sources(source, n_adding, k, rng)

    tree = KDTree(array)
    array64 = np.asarray(array, np.float64)
    patches = []
    next_source = 0
    for anchor_index, anchor_kind in zip(anchors, kinds):
        centre = array64[anchor_index]
        if anchor_kind == "removing":
            removed = _removal_mask(tree, array64, centre[None], k, fraction, rng)
            count = min(n, n_points + int(removed.sum()))
            _, indices = tree.query(centre, count)
            indices = np.atleast_1d(indices)
            candidates = array64[indices[~removed[indices]]]
        else:
            normal = _check_unit_normal(
                normals[anchor_index], f"normals[{int(anchor_index)}]"
            )
            scale = tuple(size * value for value in _neighbourhood_size(tree, centre, k))
            added = _adding_patch(
                sources[next_source], k, direction, centre, normal, scale, offset,
                spin, rng,
            )
            next_source += 1
            _, indices = tree.query(centre, min(n, n_points))
            candidates = np.concatenate([array64[np.atleast_1d(indices)], added])
        patches.append(_patch_from_candidates(candidates, centre, n_points, rng))

    normal_centres = _normal_patch_centres(anchors, n, normal_at_anchors, rng)
    for centre_index in normal_centres:
        centre = array64[centre_index]
        _, indices = tree.query(centre, min(n, n_points))
        patches.append(
            _patch_from_candidates(array64[np.atleast_1d(indices)], centre, n_points, rng)
        )

    labels = np.concatenate(
        [np.ones(len(anchors), np.int8), np.zeros(len(normal_centres), np.int8)]
    )
    logger.debug(
        "synthesized %d anomaly and %d normal patches of %d points (kind=%s, k=%d)",
        len(anchors), len(normal_centres), n_points, kind, k,
    )
    return np.stack(patches), labels


def _normal_patch_centres(
    anchors: np.ndarray, n: int, share: float, rng: np.random.Generator
) -> np.ndarray:
    """Pick the centres of the normal patches: some anchors, then random non-anchors."""
    n_anchors = len(anchors)
    n_at_anchors = math.floor(share * n_anchors + 0.5)
    at_anchors = np.sort(rng.choice(n_anchors, size=n_at_anchors, replace=False))
    pool = np.setdiff1d(np.arange(n), anchors)
    n_random = n_anchors - n_at_anchors
    if len(pool) == 0:
        # Every point is an anchor, so the random patches fall back to any point.
        pool = np.arange(n)
    others = rng.choice(pool, size=n_random, replace=n_random > len(pool))
    return np.concatenate([anchors[at_anchors], others]).astype(np.intp)


# ---------------------------------------------------------------------------------
# Camera model of organized clouds


@dataclass(frozen=True)
class CameraModel:
    """Projection from 3D points to the pixel grid of an organized cloud.

    Pixel ``(row, col)`` has image coordinates ``u = col`` and ``v = row``. A pinhole
    camera at the origin maps ``(x, y, z)`` to ``u = fx * x / z + cx`` and
    ``v = fy * y / z + cy``. An orthographic camera maps it to ``u = fx * x + cx`` and
    ``v = fy * y + cy``. Depth is ``depth_sign * z``, and a smaller depth is nearer to
    the camera. For a pinhole ``depth_sign`` is the sign of the scene's z, and for an
    orthographic camera it is +1, so that camera looks along +z.

    Attributes
    ----------
    kind : {"pinhole", "orthographic"}
    fx, fy, cx, cy : float
        Focal lengths and principal point in pixels (pinhole), or pixels per unit and
        offsets (orthographic).
    depth_sign : float
        +1 or -1.
    rms_error : float
        Root-mean-square reprojection error of the fit, in pixels (0 when the model was
        built by hand).
    """

    kind: str
    fx: float
    fy: float
    cx: float
    cy: float
    depth_sign: float = 1.0
    rms_error: float = 0.0

    def __post_init__(self) -> None:
        _check_kind_name(self.kind)
        for name in ("fx", "fy", "cx", "cy", "depth_sign", "rms_error"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"{name} must be a real number, but got {type(value).__name__} "
                    f"{value!r}."
                )
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, but got {value!r}.")
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if value == 0.0:
                raise ValueError(f"{name} must be finite and nonzero, but got {value!r}.")
        if self.depth_sign not in (1.0, -1.0):
            raise ValueError(f"depth_sign must be +1 or -1, but got {self.depth_sign!r}.")

    def project(self, points: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project ``(M, 3)`` points to image coordinates ``u``, ``v`` and depth.

        A pinhole gives ``u = v = NaN`` for points at or behind the camera (depth <= 0),
        and NaN rows give NaN.
        """
        array = np.asarray(as_float_array(points, "points"), np.float64)
        if array.ndim != 2 or array.shape[1] != 3:
            raise ValueError(f"points must have shape (M, 3), but got {array.shape}.")
        x, y, z = array[:, 0], array[:, 1], array[:, 2]
        depth = self.depth_sign * z
        if self.kind == "pinhole":
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.where(depth > 0, self.fx * x / z + self.cx, np.nan)
                v = np.where(depth > 0, self.fy * y / z + self.cy, np.nan)
        else:
            u = self.fx * x + self.cx
            v = self.fy * y + self.cy
        return u, v, depth

    def back_project(self, u: Any, v: Any, depth: Any) -> np.ndarray:
        """Return the ``(M, 3)`` points at image coordinates ``u, v`` and ``depth``."""
        u = np.asarray(as_float_array(u, "u"), np.float64).reshape(-1)
        v = np.asarray(as_float_array(v, "v"), np.float64).reshape(-1)
        depth = np.asarray(as_float_array(depth, "depth"), np.float64).reshape(-1)
        if not u.shape == v.shape == depth.shape:
            raise ValueError(
                f"u, v and depth must have the same length, but got {u.size}, "
                f"{v.size} and {depth.size}."
            )
        z = self.depth_sign * depth
        if self.kind == "pinhole":
            x = (u - self.cx) * z / self.fx
            y = (v - self.cy) * z / self.fy
        else:
            x = (u - self.cx) / self.fx
            y = (v - self.cy) / self.fy
        return np.column_stack([x, y, z])

    def toward_camera(self, point: np.ndarray) -> np.ndarray:
        """Return the unit vector from ``point`` toward the camera."""
        if self.kind == "pinhole":
            norm = float(np.linalg.norm(point))
            if norm > 0:
                return -np.asarray(point, np.float64) / norm
        return np.array([0.0, 0.0, -self.depth_sign])


def _check_kind_name(kind: Any) -> None:
    if kind not in ("pinhole", "orthographic"):
        raise ValueError(
            f"kind must be 'pinhole' or 'orthographic', but got {kind!r}."
        )


def _fit_line(inputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    design = np.column_stack([inputs, np.ones_like(inputs)])
    (slope, intercept), *_ = np.linalg.lstsq(design, targets, rcond=None)
    return float(slope), float(intercept)


def fit_camera(xyz: Any) -> CameraModel:
    """Fit the camera model of an organized cloud to its valid pixels by least squares.

    A pinhole ``u = fx x / z + cx, v = fy y / z + cy`` and an orthographic
    ``u = fx x + cx, v = fy y + cy`` model are each fitted as two straight lines, and
    the one with the smaller RMS reprojection error is returned, the pinhole on a tie.
    Real sensor clouds fit the pinhole. The orthographic model covers height maps on a
    regular x-y grid. No pinhole is fitted when z changes sign, or when all valid z
    are equal (spread at most 1e-9 of the largest ``|z|``). A flat scene at constant
    depth fits both models exactly, and such clouds usually come from an
    orthographic source. A fit with RMS error above 0.5 pixel is logged as a warning, because
    added points are then drawn on the wrong pixels.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud, NaN where no point was measured.

    Returns
    -------
    CameraModel

    Raises
    ------
    ValueError
        If fewer than 3 pixels are valid, or the valid pixels do not span at least two
        rows and two columns.

    Examples
    --------
    >>> import numpy as np
    >>> rows, cols = np.mgrid[0:4, 0:5].astype(float)
    >>> z = 2.0 + 0.1 * cols
    >>> xyz = np.stack([(cols - 2) * z / 100, (rows - 1.5) * z / 100, z], axis=-1)
    >>> camera = fit_camera(xyz)
    >>> camera.kind, round(camera.fx, 6), round(camera.cx, 6)
    ('pinhole', 100.0, 2.0)
    """
    array = check_organized(xyz, "xyz", min_valid=3)
    valid = ~np.isnan(array).any(axis=2)
    rows, cols = np.nonzero(valid)
    if np.unique(rows).size < 2 or np.unique(cols).size < 2:
        raise ValueError(
            "xyz must have valid pixels in at least two rows and two columns to fit a "
            f"camera model, but its valid pixels span {np.unique(rows).size} rows and "
            f"{np.unique(cols).size} columns."
        )
    points = np.asarray(array[valid], np.float64)
    u = cols.astype(np.float64)
    v = rows.astype(np.float64)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]

    candidates = [_fit_orthographic(x, y, u, v)]
    z_scale = float(np.abs(z).max())
    constant_z = float(z.max() - z.min()) <= 1e-9 * z_scale
    one_sign = bool((z > 0).all() or (z < 0).all())
    if one_sign and not constant_z:
        candidates.insert(0, _fit_pinhole(x, y, z, u, v))
    candidates = [camera for camera in candidates if camera is not None]
    if not candidates:
        raise ValueError(
            "xyz has no camera model: x or y is constant along the valid pixels, so "
            "pixel positions cannot be predicted from the coordinates."
        )
    best = min(candidates, key=lambda camera: camera.rms_error)
    log = logger.warning if best.rms_error > CAMERA_WARN_RMS else logger.debug
    log(
        "fitted a %s camera (fx=%.6g, fy=%.6g, cx=%.6g, cy=%.6g) with RMS "
        "reprojection error %.3g px",
        best.kind, best.fx, best.fy, best.cx, best.cy, best.rms_error,
    )
    return best


def _rms(u: np.ndarray, v: np.ndarray, u_fit: np.ndarray, v_fit: np.ndarray) -> float:
    return float(np.sqrt(np.mean((u_fit - u) ** 2 + (v_fit - v) ** 2)))


def _fit_pinhole(x, y, z, u, v) -> CameraModel | None:
    fx, cx = _fit_line(x / z, u)
    fy, cy = _fit_line(y / z, v)
    if not (math.isfinite(fx) and math.isfinite(fy)) or fx == 0.0 or fy == 0.0:
        return None
    error = _rms(u, v, fx * x / z + cx, fy * y / z + cy)
    sign = 1.0 if z[0] > 0 else -1.0
    return CameraModel("pinhole", fx, fy, cx, cy, depth_sign=sign, rms_error=error)


def _fit_orthographic(x, y, u, v) -> CameraModel | None:
    fx, cx = _fit_line(x, u)
    fy, cy = _fit_line(y, v)
    if not (math.isfinite(fx) and math.isfinite(fy)) or fx == 0.0 or fy == 0.0:
        return None
    error = _rms(u, v, fx * x + cx, fy * y + cy)
    return CameraModel("orthographic", fx, fy, cx, cy, depth_sign=1.0, rms_error=error)


# ---------------------------------------------------------------------------------
# Organized clouds


def _estimate_normal(
    tree: KDTree, points: np.ndarray, centre: np.ndarray, k: int, camera: CameraModel
) -> np.ndarray:
    """Return the PCA normal of the anchor's neighbourhood, turned toward the camera."""
    count = min(tree.n, max(k, 3))
    if count < 3:
        raise ValueError(
            f"estimating the anchor's normal needs at least 3 valid points, but xyz "
            f"has {tree.n}. Pass normals."
        )
    _, indices = tree.query(centre, count)
    neighbours = points[indices] - points[indices].mean(axis=0)
    _, vectors = np.linalg.eigh(neighbours.T @ neighbours)
    normal = vectors[:, 0]
    if normal @ camera.toward_camera(centre) < 0:
        normal = -normal
    return normal


def _fill_radius(u: np.ndarray, v: np.ndarray, shape: tuple[int, int]) -> int:
    """Return 1.5 times the median distance in pixels from a drawn point to its 4th nearest.

    On random points at one point per pixel this gives a radius of 2, which leaves
    almost no hole inside the drawn region. Only points that land within
    ``MAX_FILL_RADIUS`` pixels of the image count, because the others are never drawn.
    """
    margin = MAX_FILL_RADIUS
    finite = (
        np.isfinite(u)
        & np.isfinite(v)
        & (u > -margin)
        & (u < shape[1] + margin)
        & (v > -margin)
        & (v < shape[0] + margin)
    )
    if finite.sum() < 2:
        return 1
    uv = np.column_stack([u[finite], v[finite]])
    distances, _ = KDTree(uv).query(uv, min(5, len(uv)))
    spacing = float(np.median(distances[:, -1]))
    return int(min(MAX_FILL_RADIUS, max(1, math.ceil(1.5 * spacing))))


def _render_patch(
    patch: np.ndarray,
    camera: CameraModel,
    shape: tuple[int, int],
    fill_radius: int | None,
) -> np.ndarray:
    """Draw patch points into a depth buffer (inf where empty) and fill its gaps."""
    u, v, depth = camera.project(patch)
    buffer = _synthesis.splat_depth(
        np.ascontiguousarray(u), np.ascontiguousarray(v), np.ascontiguousarray(depth),
        shape[0], shape[1],
    )
    radius = _fill_radius(u, v, shape) if fill_radius is None else fill_radius
    return _synthesis.fill_depth_gaps(buffer, radius, FILL_QUADRANTS)


def _composite(current: np.ndarray, buffer: np.ndarray, camera: CameraModel) -> None:
    """Write drawn pixels into ``current`` (H, W, 3) where they are nearer or fill a hole.

    Each written pixel gets the point on its own pixel centre's viewing ray at the drawn
    depth, so the result stays consistent with the camera model.
    """
    rows, cols = np.nonzero(np.isfinite(buffer))
    if rows.size == 0:
        return
    new_depth = buffer[rows, cols]
    old = current[rows, cols]
    old_depth = camera.depth_sign * old[:, 2]
    replace = np.isnan(old).any(axis=1) | (new_depth < old_depth)
    rows, cols, new_depth = rows[replace], cols[replace], new_depth[replace]
    current[rows, cols] = camera.back_project(cols, rows, new_depth)


def synthesize_organized(
    xyz: Any,
    anchors: Any,
    *,
    kind: str,
    k: int = 128,
    fraction: float = 1.0,
    normals: Any = None,
    source: Any = None,
    offset: Sequence[float] = DEFAULT_OFFSET,
    size: float = 1.0,
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    spin: bool = True,
    camera: CameraModel | None = None,
    fill_radius: int | None = None,
    tolerance: float | None = None,
    seed: Any = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize pseudo anomalies in an organized cloud at the given anchor pixels.

    Neighbourhoods are the ``k`` nearest valid points in 3D (KD-tree), all taken from
    the input cloud.

    - "removing": the pixels of each anchor's neighbourhood (or of a compact part of it,
      see ``fraction``) become NaN.
    - "adding": for each anchor in turn, a patch is built as in :func:`adding_anomaly`
      and drawn into the grid with ``camera``. Each point lands on its nearest pixel,
      and the nearest point wins a pixel (z-buffer). Empty pixels that drawn pixels
      surround in at least 3 of 4 quadrants within ``fill_radius`` get the inverse
      squared distance weighted depth of those pixels, so the added surface is dense
      without growing past its outline. A drawn pixel replaces the scan's point when
      it is nearer to the camera or the scan has no point there, and it takes the
      point at its depth on the pixel centre's viewing ray.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized normal scan, NaN where no point was measured.
    anchors : array-like of int, shape (A,)
        Flat pixel indices (``row * W + col``) of valid pixels.
    kind : {"removing", "adding"}
    k : int, default 128
        Neighbourhood size in points, at most the number of valid points. On a scan
        resized to 224 x 224 it covers about 128 pixels, the size of real defects: the
        87 defect masks of the MVTec 3D-AD tire test set, scaled to 224 x 224, cover
        51 to 203 pixels (10th to 90th percentile, median 92).
    fraction : float, default 1.0
        Share of the neighbourhood that "removing" takes out (see
        :func:`removing_anomaly`).
    normals : array-like of shape (H, W, 3), optional
        Outward normals. Only the anchors' normals are used, as given. By default the
        normal of an anchor is the PCA normal of its ``k`` nearest valid points (at
        least 3), turned toward the camera.
    source : array-like of shape (n_source, 3), list of them, or None
        Clouds to cut "adding" patches from (see :func:`synthesize_patches`).
    offset, size, direction, spin
        Placement of "adding" patches (see :func:`adding_anomaly`).
    camera : CameraModel, optional
        Camera of the grid. By default :func:`fit_camera` fits it to ``xyz``.
    fill_radius : int, optional
        Half width in pixels of the gap-filling window, >= 1. The default is 1.5 times
        the median distance from a drawn point to its 4th nearest drawn point, rounded
        up and at most 16.
    tolerance : float, optional
        A pixel counts as changed when a coordinate moves by more than this, in the
        units of ``xyz``. Pixels within it keep their input value. The default is
        ``1e-6`` times the diagonal of the valid points' bounding box.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    new_xyz : ndarray of shape (H, W, 3)
        The changed cloud, in the input dtype.
    mask : ndarray of shape (H, W), bool
        True exactly where a pixel changed: removed, added over a hole, or moved by
        more than ``tolerance``. Every other pixel equals the input bit for bit.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, an anchor is not a valid pixel, ``k`` exceeds the
        valid points or a source cloud, a source is empty, or a parameter is out of
        its range.

    Notes
    -----
    Added pixels follow the fitted camera. When the cloud does not fit either camera
    model (see :func:`fit_camera`), added points land on approximate pixels.
    """
    array = check_organized(xyz, "xyz", min_valid=1)
    kind = _check_kind(kind, ORGANIZED_KINDS)
    height, width = array.shape[:2]
    valid = ~np.isnan(array).any(axis=2)
    flat_valid = np.flatnonzero(valid)
    n_valid = flat_valid.size
    anchors = _check_pixel_anchors(anchors, valid)
    k = check_int(k, "k", minimum=1)
    if k > n_valid:
        raise ValueError(
            f"k={k} is larger than the number of valid points in xyz ({n_valid}). "
            f"Pass k <= {n_valid}."
        )
    fraction = _check_fraction(fraction)
    rng = check_rng(seed)

    points = np.asarray(array.reshape(-1, 3)[flat_valid], np.float64)
    tree = KDTree(points)
    anchor_rows = np.searchsorted(flat_valid, anchors)

    if kind == "removing":
        removed = _removal_mask(tree, points, points[anchor_rows], k, fraction, rng)
        mask = np.zeros(height * width, dtype=bool)
        mask[flat_valid[removed]] = True
        new_xyz = array.copy()
        new_xyz.reshape(-1, 3)[mask] = np.nan
        logger.debug(
            "removed %d points around %d anchors (k=%d)", int(removed.sum()),
            len(anchors), k,
        )
        return new_xyz, mask.reshape(height, width)

    offset = _check_offset(offset)
    size = check_positive(size, "size")
    direction = _check_direction(direction)
    if normals is not None:
        normals = _check_normals_array(normals, array.shape, "normals")
    if fill_radius is not None:
        fill_radius = check_int(fill_radius, "fill_radius", minimum=1)
        # A window wider than the image sees the same pixels, and the kernel loops
        # over the whole window, so the radius is clamped to the image.
        fill_radius = min(fill_radius, max(height, width))
    if camera is None:
        camera = fit_camera(array)
    elif not isinstance(camera, CameraModel):
        raise TypeError(
            f"camera must be a CameraModel or None, but got {type(camera).__name__}. "
            "Build one with fit_camera(xyz)."
        )
    sources = _resolve_sources(source, len(anchors), k, rng)

    current = np.asarray(array, np.float64).copy()
    for i, (flat, row) in enumerate(zip(anchors, anchor_rows)):
        centre = points[row]
        if normals is None:
            normal = _estimate_normal(tree, points, centre, k, camera)
        else:
            pixel = divmod(int(flat), width)
            normal = _check_unit_normal(normals[pixel], f"normals[{pixel[0]}, {pixel[1]}]")
        scale = tuple(size * value for value in _neighbourhood_size(tree, centre, k))
        patch = _adding_patch(
            sources[i], k, direction, centre, normal, scale, offset, spin, rng
        )
        buffer = _render_patch(patch, camera, (height, width), fill_radius)
        _composite(current, buffer, camera)

    new_xyz, mask = _changed_pixels(array, current, tolerance)
    logger.debug(
        "added patches of %d points at %d anchors, %d pixels changed",
        k, len(anchors), int(mask.sum()),
    )
    return new_xyz, mask


def _changed_pixels(
    original: np.ndarray, current: np.ndarray, tolerance: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cast ``current`` to the input dtype and keep only the pixels that changed."""
    if tolerance is None:
        finite = original[~np.isnan(original).any(axis=2)].astype(np.float64)
        diagonal = float(np.linalg.norm(finite.max(axis=0) - finite.min(axis=0)))
        tolerance = 1e-6 * diagonal
    else:
        tolerance = check_positive(tolerance, "tolerance", allow_zero=True)
    # Compare after the cast, so a pixel in the mask has changed in the output dtype.
    candidate = current.astype(original.dtype)
    was_missing = np.isnan(original).any(axis=2)
    is_missing = np.isnan(candidate).any(axis=2)
    with np.errstate(invalid="ignore"):
        moved = (
            np.abs(candidate.astype(np.float64) - original.astype(np.float64)).max(axis=2)
            > tolerance
        )
    mask = np.where(was_missing | is_missing, was_missing != is_missing, moved)
    new_xyz = original.copy()
    new_xyz[mask] = candidate[mask]
    return new_xyz, mask


# ---------------------------------------------------------------------------------
# Anchors


def select_anchors(
    score_map: Any,
    valid: Any,
    n_anchors: int,
    *,
    min_distance: float | None = None,
    jitter: float = 0.0,
    seed: Any = 0,
) -> np.ndarray:
    """Pick the highest-scoring valid pixels, at least ``min_distance`` pixels apart.

    Pixels are visited from the highest score down (equal scores in flat index order),
    and a pixel is selected when no selected pixel lies closer than ``min_distance``
    (Euclidean distance in pixels). The spacing spreads the anchors over the object
    instead of stacking them on one strong response.

    Parameters
    ----------
    score_map : array-like of shape (H, W)
        Activation map, for example ``zal3d_torch.resnet.inductive_bias_map``. NaN
        pixels are never picked. Infinite values are rejected.
    valid : ndarray of shape (H, W), bool
        Pixels that may become anchors (the pixels with a point).
    n_anchors : int
        Number of anchors, at most the number of valid pixels with a finite score.
    min_distance : float, optional
        Smallest distance in pixels between two anchors, >= 0. The default
        ``0.5 * sqrt(n_candidates / n_anchors)`` is half the spacing of ``n_anchors``
        points spread evenly over the candidate pixels, which leaves room for all of
        them on a compact object.
    jitter : float, default 0.0
        Standard deviation of Gaussian noise added to the scores before ranking, in
        units of the scores' standard deviation. With ``jitter > 0`` different seeds
        pick different anchors among the strong responses, which varies the anchors
        between training epochs. With 0 the seed is unused.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    anchors : ndarray of shape (n_selected,), intp
        Flat pixel indices, best first. ``n_selected`` is less than ``n_anchors`` when the
        spacing leaves no room for more (logged as a warning).

    Raises
    ------
    ValueError
        If the shapes differ, ``score_map`` has infinite values, or ``n_anchors``
        exceeds the candidate pixels.
    TypeError
        If ``valid`` is not a bool array.

    Examples
    --------
    >>> import numpy as np
    >>> scores = np.zeros((5, 5))
    >>> scores[0, 0], scores[0, 1], scores[4, 4] = 3.0, 2.0, 1.0
    >>> select_anchors(scores, np.ones((5, 5), bool), 2, min_distance=2).tolist()
    [0, 24]
    """
    scores = as_float_array(score_map, "score_map")
    if scores.ndim != 2:
        raise ValueError(f"score_map must have shape (H, W), but got {scores.shape}.")
    valid = _check_valid_mask(valid, scores.shape)
    if np.isinf(scores).any():
        raise ValueError(
            f"score_map contains {int(np.isinf(scores).sum())} infinite values. Use NaN "
            "for pixels that must not become anchors."
        )
    candidates = valid & ~np.isnan(scores)
    n_candidates = int(candidates.sum())
    n_anchors = check_int(n_anchors, "n_anchors", minimum=1)
    if n_anchors > n_candidates:
        raise ValueError(
            f"n_anchors={n_anchors} is larger than the number of valid pixels with a "
            f"finite score ({n_candidates}). Pass n_anchors <= {n_candidates}."
        )
    if min_distance is None:
        min_distance = 0.5 * math.sqrt(n_candidates / n_anchors)
    else:
        min_distance = check_positive(min_distance, "min_distance", allow_zero=True)
    # No two pixels are hypot(H, W) apart, so a larger spacing selects the same single
    # anchor; clamping keeps the kernel's blocking window within the image.
    min_distance = min(min_distance, math.hypot(*scores.shape))
    jitter = check_positive(jitter, "jitter", allow_zero=True)
    rng = check_rng(seed)

    flat = np.flatnonzero(candidates)
    values = np.asarray(scores.reshape(-1)[flat], np.float64)
    if jitter > 0:
        spread = float(values.std())
        values = values + jitter * spread * rng.standard_normal(values.size)
    order = flat[np.lexsort((flat, -values))].astype(np.intp)
    selected = _synthesis.select_spread(
        order, scores.shape[0], scores.shape[1], n_anchors, float(min_distance)
    )
    if selected.size < n_anchors:
        logger.warning(
            "select_anchors found room for only %d of %d anchors at min_distance=%.3g "
            "pixels; pass a smaller min_distance for more",
            selected.size, n_anchors, min_distance,
        )
    return selected


def random_anchors(valid: Any, n_anchors: int, seed: Any = 0) -> np.ndarray:
    """Pick ``n_anchors`` distinct valid pixels uniformly at random.

    This is the ablation of 3DzAL without the inductive-bias map.

    Parameters
    ----------
    valid : ndarray of shape (H, W), bool
        Pixels that may become anchors.
    n_anchors : int
        Number of anchors, at most the number of valid pixels.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    anchors : ndarray of shape (n_anchors,), intp
        Flat pixel indices in the order drawn.

    Raises
    ------
    ValueError
        If ``n_anchors`` exceeds the number of valid pixels.
    TypeError
        If ``valid`` is not a bool array.
    """
    valid = _check_valid_mask(valid, None)
    flat = np.flatnonzero(valid)
    n_anchors = check_int(n_anchors, "n_anchors", minimum=1)
    if n_anchors > flat.size:
        raise ValueError(
            f"n_anchors={n_anchors} is larger than the number of valid pixels "
            f"({flat.size}). Pass n_anchors <= {flat.size}."
        )
    rng = check_rng(seed)
    return rng.choice(flat, size=n_anchors, replace=False).astype(np.intp)
