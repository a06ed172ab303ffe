"""Preprocessing of organized scans: background plane removal, clustering, resizing.

All functions return new arrays and leave their input unchanged. Organized clouds are
``(H, W, 3)`` with NaN where no point was measured. :func:`remove_background` and
:func:`largest_cluster` also treat a point at exactly (0, 0, 0) as missing. Arrays
loaded by other tools keep the MVTec 3D-AD marker of zero background, and no sensor
measures a point at its own origin. Such points are NaN in the output.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ._kernels import _ransac
from ._validation import (
    center_points,
    check_int,
    check_organized,
    check_points,
    check_positive,
    check_seed,
)
from .datasets import Sample

__all__ = [
    "PlaneFit",
    "fit_plane",
    "largest_cluster",
    "preprocess_sample",
    "remove_background",
    "resize_mask",
    "resize_organized",
    "resize_rgb",
]

logger = logging.getLogger(__name__)

# Rule of distance="auto", with s the median point spacing and sigma the robust
# residual scale (1.4826 x median absolute deviation) of the plane's inliers:
#   fit threshold     = AUTO_FIT_SPACINGS * s
#   removal distance  = max(AUTO_SPACINGS * s, AUTO_SIGMAS * sigma)
# Both terms scale with the coordinates, so scans in metres and in millimetres give the
# same mask. The spacing term covers the depth steps of quantized sensors, and the
# sigma term covers planes noisier than their point spacing.
# NOTE: these factors were checked on synthetic scans and on one real stereo scan
# (PCL's table_scene_mug_stereo_textured), not on MVTec 3D-AD xyz.
AUTO_FIT_SPACINGS = 3.0
AUTO_SPACINGS = 3.0
AUTO_SIGMAS = 4.0
# Rounds of "take the inliers within the removal distance, refit, re-estimate sigma".
AUTO_REFIT_ROUNDS = 2
# Consistency constant that turns a median absolute deviation into a Gaussian sigma.
MAD_TO_SIGMA = 1.4826

# largest_cluster(radius="auto") links 8-neighbour pixels closer than this many
# median 4-neighbour spacings.
AUTO_CLUSTER_SPACINGS = 5.0

# Largest side accepted by the resize functions: Pillow 13 stores image sizes as C int.
MAX_SIZE = 2**31 - 1


@dataclasses.dataclass(frozen=True, eq=False)
class PlaneFit:
    """A fitted plane ``a x + b y + c z + d = 0`` and the threshold used with it.

    Attributes
    ----------
    coefficients : ndarray of shape (4,), float64
        ``(a, b, c, d)`` with a unit normal ``(a, b, c)``, oriented so that its first
        nonzero component among ``c, b, a`` is positive (``c > 0`` for planes seen
        from above or below).
    distance : float
        Inlier and removal threshold, in the units of the points.
    n_points : int
        Number of points the plane was fitted to.
    n_inliers : int
        Points of the fit within ``distance`` of the final plane.
    spacing : float
        Median point spacing used by ``distance="auto"``, or NaN for an absolute distance.
    """

    coefficients: np.ndarray
    distance: float
    n_points: int
    n_inliers: int
    spacing: float

    @property
    def normal(self) -> np.ndarray:
        """Unit normal ``(a, b, c)``."""
        return self.coefficients[:3].copy()

    def signed_distance(self, points: Any) -> np.ndarray:
        """Return the signed distance of each point in (..., 3) ``points`` to the plane."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.coefficients[:3] + self.coefficients[3]


# ---------------------------------------------------------------------------------------
# Argument checks


def _check_ransac_args(
    ransac_n: Any, iterations: Any, seed: Any
) -> tuple[int, int, int]:
    if isinstance(ransac_n, bool) or not isinstance(ransac_n, (int, np.integer)):
        raise TypeError(f"ransac_n must be an int, but got {ransac_n!r}.")
    if ransac_n < 3:
        raise ValueError(
            f"ransac_n must be >= 3, because a plane needs three points, but got "
            f"{ransac_n}."
        )
    iterations = check_int(iterations, "iterations", minimum=1)
    return int(ransac_n), iterations, check_seed(seed)


def _check_distance(distance: Any) -> float | None:
    """Return None for "auto", else the absolute distance as a float."""
    if isinstance(distance, str):
        if distance != "auto":
            raise ValueError(
                f"distance must be 'auto' or a positive number, but got {distance!r}."
            )
        return None
    return check_positive(distance, "distance")


def _check_size(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height = check_int(size[0], "size[0] (height)", minimum=1)
        width = check_int(size[1], "size[1] (width)", minimum=1)
    else:
        raise TypeError(
            f"size must be an int or a (height, width) pair of ints, but got {size!r}."
        )
    if height < 1 or width < 1:
        raise ValueError(f"size must be >= 1 in each dimension, but got {size!r}.")
    if max(height, width) > MAX_SIZE:
        raise ValueError(
            f"size must be at most {MAX_SIZE} pixels in each dimension, the limit of "
            f"Pillow's image sizes, but got {size!r}."
        )
    return height, width


# ---------------------------------------------------------------------------------------
# Plane fitting


def _least_squares_plane(points: np.ndarray) -> np.ndarray:
    """Fit ``(a, b, c, d)`` to centred float64 points by the smallest covariance axis."""
    mean = points.mean(axis=0)
    deviations = points - mean
    _, vectors = np.linalg.eigh(deviations.T @ deviations)
    normal = vectors[:, 0]
    return np.array([*normal, -normal @ mean])


def _refit(centred: np.ndarray, inliers: np.ndarray, plane: np.ndarray) -> np.ndarray:
    # A sample of more than 3 points may leave fewer than 3 inliers, and then the
    # least-squares plane is undefined, so the RANSAC plane stays.
    if int(inliers.sum()) < 3:
        return plane
    return _least_squares_plane(centred[inliers])


def _orient(plane: np.ndarray) -> np.ndarray:
    for axis in (2, 1, 0):
        if plane[axis] != 0:
            return plane if plane[axis] > 0 else -plane
    return plane


def _robust_sigma(residuals: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(residuals - np.median(residuals))))


def _median_nearest_spacing(points: np.ndarray) -> float:
    from .neighbors import KDTree

    distances, _ = KDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


def _fit_centred(
    centred: np.ndarray,
    distance: float | None,
    spacing: float,
    ransac_n: int,
    iterations: int,
    seed: int,
) -> tuple[np.ndarray, float, int]:
    """Fit a plane to centred float64 points and return (plane, distance, n_inliers)."""
    if distance is None:
        if not spacing > 0:
            raise ValueError(
                f"distance='auto' needs a positive median point spacing, but the "
                f"{len(centred)} fitted points have spacing {spacing!r} (repeated "
                "points?). Pass an absolute distance instead."
            )
        fit_threshold = AUTO_FIT_SPACINGS * spacing
    else:
        fit_threshold = distance

    uniforms = np.random.default_rng(seed).random((iterations, ransac_n))
    plane, count = _ransac.ransac_plane(centred, uniforms, fit_threshold)
    if count < 0:
        raise ValueError(
            f"No plane fits the {len(centred)} points: every one of the {iterations} "
            f"random samples of ransac_n={ransac_n} points was collinear or repeated. "
            "Check whether the points lie on a line."
        )

    inliers = np.abs(centred @ plane[:3] + plane[3]) <= fit_threshold
    plane = _refit(centred, inliers, plane)
    if distance is None:
        for _ in range(AUTO_REFIT_ROUNDS):
            sigma = _robust_sigma(centred[inliers] @ plane[:3] + plane[3])
            distance = max(AUTO_SPACINGS * spacing, AUTO_SIGMAS * sigma)
            inliers = np.abs(centred @ plane[:3] + plane[3]) <= distance
            plane = _refit(centred, inliers, plane)
    n_inliers = int((np.abs(centred @ plane[:3] + plane[3]) <= distance).sum())
    return _orient(plane), float(distance), n_inliers


def _uncentre(plane: np.ndarray, center: np.ndarray) -> np.ndarray:
    # n . (p - c) + d = n . p + (d - n . c)
    return np.array([*plane[:3], plane[3] - plane[:3] @ center])


def fit_plane(
    points: Any,
    *,
    distance: float | str = "auto",
    ransac_n: int = 3,
    iterations: int = 1000,
    seed: int | np.random.Generator = 0,
) -> PlaneFit:
    """Fit a plane to unorganized points with RANSAC, then refit it by least squares.

    Parameters
    ----------
    points : array-like of shape (n_points, 3)
        Finite points.
    distance : float or "auto", default "auto"
        Inlier threshold. "auto" derives it from the points (see Notes).
    ransac_n : int, default 3
        Points per random sample. More than 3 gives the least-squares plane of the
        sample.
    iterations : int, default 1000
        Number of random samples. Every sample is tried, with no early stop.
    seed : int or numpy.random.Generator, default 0
        The same seed gives the same plane.

    Returns
    -------
    PlaneFit

    Raises
    ------
    ValueError
        If there are fewer than ``ransac_n`` points, ``ransac_n < 3``, or every
        sample is degenerate.

    Notes
    -----
    With ``distance="auto"`` the spacing ``s`` is the median distance of each point to
    its nearest neighbour. RANSAC counts inliers within ``3 s``. The plane is then
    refit by least squares to its inliers, twice more with the threshold
    ``max(3 s, 4 sigma)``, where ``sigma`` is 1.4826 times the median absolute
    deviation of the inliers' residuals. The final threshold is returned as
    :attr:`PlaneFit.distance`.
    """
    ransac_n, iterations, seed = _check_ransac_args(ransac_n, iterations, seed)
    distance = _check_distance(distance)
    array = check_points(points, "points", min_points=0)
    if array.shape[0] < ransac_n:
        raise ValueError(
            f"fit_plane needs at least ransac_n={ransac_n} points, but got "
            f"{array.shape[0]}. Pass more points or a smaller ransac_n (>= 3)."
        )
    centred, center = center_points(array)
    spacing = _median_nearest_spacing(centred) if distance is None else float("nan")
    plane, used, n_inliers = _fit_centred(
        centred, distance, spacing, ransac_n, iterations, seed
    )
    return PlaneFit(
        coefficients=_uncentre(plane, center),
        distance=used,
        n_points=int(array.shape[0]),
        n_inliers=n_inliers,
        spacing=spacing,
    )


# ---------------------------------------------------------------------------------------
# Organized clouds: background removal


def _valid_mask(xyz: np.ndarray) -> np.ndarray:
    """Return the (H, W) mask of measured points: no NaN and not exactly (0, 0, 0)."""
    return ~np.isnan(xyz).any(axis=2) & (xyz != 0).any(axis=2)


def _border_mask(height: int, width: int, border: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[:border, :] = True
    mask[-border:, :] = True
    mask[:, :border] = True
    mask[:, -border:] = True
    return mask


def _grid_spacings(xyz: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Return the 3D distances between horizontally or vertically adjacent kept pixels."""
    pairs = []
    for a, b in (
        (np.s_[:, :-1], np.s_[:, 1:]),
        (np.s_[:-1, :], np.s_[1:, :]),
    ):
        both = keep[a] & keep[b]
        if both.any():
            pairs.append(np.linalg.norm(xyz[a][both] - xyz[b][both], axis=1))
    return np.concatenate(pairs) if pairs else np.empty(0)


def remove_background(
    xyz: Any,
    *,
    border: int = 10,
    distance: float | str = "auto",
    ransac_n: int = 3,
    iterations: int = 1000,
    seed: int | np.random.Generator = 0,
    return_plane: bool = False,
) -> np.ndarray | tuple[np.ndarray, PlaneFit]:
    """Set to NaN every point near the plane fitted to the border of the image.

    The object of an industrial scan sits in the middle of the image on a flat
    background. A plane is fitted with RANSAC (then least squares, see
    :func:`fit_plane`) to the valid points of the strip ``border`` pixels wide along
    the four image edges, and every point of the whole cloud within ``distance`` of
    that plane becomes NaN.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud with NaN where no point was measured.
    border : int, default 10
        Width of the border strip in pixels. ``2 * border`` must be smaller than both
        H and W.
    distance : float or "auto", default "auto"
        Removal threshold, also used as the RANSAC inlier threshold when absolute.
        "auto" (see Notes) works for scans in metres and in millimetres alike.
    ransac_n : int, default 3
        Points per RANSAC sample, >= 3.
    iterations : int, default 1000
        RANSAC samples.
    seed : int or numpy.random.Generator, default 0
        The same seed gives the same result.
    return_plane : bool, default False
        Also return the :class:`PlaneFit` (coefficients in the input's coordinates).

    Returns
    -------
    cleaned : ndarray of shape (H, W, 3)
        A copy of ``xyz`` (same float dtype) with the plane points set to NaN.
    plane : PlaneFit
        Only with ``return_plane=True``.

    Raises
    ------
    ValueError
        If the border strip contains fewer than ``ransac_n`` valid points (for example a
        scan whose background was already removed), ``border`` does not fit the image,
        ``ransac_n < 3``, or no plane fits the strip.

    Notes
    -----
    With ``distance="auto"`` the spacing ``s`` is the median 3D distance between
    horizontally or vertically adjacent valid pixels of the strip. The threshold is
    then ``max(3 s, 4 sigma)`` as in :func:`fit_plane`, with ``sigma`` the robust
    residual scale of the plane's inliers. Objects must therefore rise more than that
    above the background to be kept. The MVTec 3D-AD preprocessing script used with
    BTF and M3DM fits with ``ransac_n=50`` and an inlier threshold of 0.004, then
    removes points closer than an absolute 0.005 (in the dataset's units). Pass
    ``distance=0.005, ransac_n=50`` to come close to it. This function uses one
    threshold for both steps and removes points at a distance ``<= distance``.

    Only a plane that fills the border strip is found. When the strip shows something
    else (walls, or the empty margin of a rectified stereo cloud), the fit removes the
    plane that dominates the strip, or raises if the strip has too few points.

    Examples
    --------
    >>> import numpy as np
    >>> rows, cols = np.mgrid[0:40, 0:40] * 1e-3
    >>> xyz = np.dstack([cols, rows, 0.5 + 0.2 * cols]).astype(np.float32)
    >>> xyz[15:25, 15:25, 2] += 0.01  # a box 10 mm high
    >>> cleaned = remove_background(xyz)
    >>> int((~np.isnan(cleaned).any(axis=2)).sum())
    100
    """
    xyz = check_organized(xyz, "xyz")
    height, width = xyz.shape[:2]
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)):
        raise TypeError(f"border must be an int number of pixels, but got {border!r}.")
    if border <= 0 or 2 * border >= min(height, width):
        largest_border = (min(height, width) - 1) // 2
        if largest_border < 1:
            fix = "The image is too small for a border strip, so skip plane removal."
        else:
            fix = f"Pass a border from 1 to {largest_border}."
        raise ValueError(
            f"border must be >= 1 and smaller than half the image size, so the strip "
            f"leaves an inner region, but got border={border} for an image of "
            f"{height} x {width} pixels. {fix}"
        )
    ransac_n, iterations, seed = _check_ransac_args(ransac_n, iterations, seed)
    distance = _check_distance(distance)

    valid = _valid_mask(xyz)
    strip = _border_mask(height, width, border) & valid
    n_strip = int(strip.sum())
    if n_strip < ransac_n:
        raise ValueError(
            f"remove_background found {n_strip} valid border points in the strip "
            f"{border} pixels wide, fewer than ransac_n={ransac_n}, so no plane can be "
            "fitted. The background may have been removed already (a preprocessed "
            "file). Use the cloud as it is, or lower ransac_n or widen border."
        )

    strip_points = xyz[strip].astype(np.float64)
    centred, center = center_points(strip_points)
    spacing = float("nan")
    if distance is None:
        spacings = _grid_spacings(xyz.astype(np.float64), strip)
        spacing = (
            float(np.median(spacings))
            if spacings.size
            else _median_nearest_spacing(centred)
        )
    plane, used, n_inliers = _fit_centred(
        centred, distance, spacing, ransac_n, iterations, seed
    )

    on_plane = _ransac.near_plane(
        np.ascontiguousarray(xyz), valid, plane, np.asarray(center, np.float64), used
    )
    cleaned = xyz.copy()
    cleaned[on_plane | ~valid] = np.nan
    logger.debug(
        "remove_background: %d strip points, %d inliers, distance %.6g, removed %d of "
        "%d points",
        n_strip,
        n_inliers,
        used,
        int(on_plane.sum()),
        int(valid.sum()),
    )
    if not return_plane:
        return cleaned
    fit = PlaneFit(
        coefficients=_uncentre(plane, center),
        distance=used,
        n_points=n_strip,
        n_inliers=n_inliers,
        spacing=spacing,
    )
    return cleaned, fit


# ---------------------------------------------------------------------------------------
# Organized clouds: connected components


def largest_cluster(
    xyz: Any, *, radius: float | str = "auto", min_points: int = 1
) -> np.ndarray:
    """Keep only the largest connected component of the valid points.

    Two valid pixels are connected when they are 8-neighbours in the image and their
    3D distance is smaller than ``radius``. Checking only image neighbours is enough
    for organized scans, whose surfaces are continuous in the image, and takes linear
    time. Points that touch in 3D but not in the image (a thin gap seen edge-on) stay
    in separate components.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud with NaN where no point was measured.
    radius : float or "auto", default "auto"
        Link distance. "auto" is 5 times the median 3D distance between horizontally or
        vertically adjacent valid pixels.
    min_points : int, default 1
        Smallest accepted size of the largest component.

    Returns
    -------
    ndarray of shape (H, W, 3)
        A copy of ``xyz`` in which points outside the largest component are NaN. Ties
        go to the component holding the first valid pixel in row-major order.

    Raises
    ------
    ValueError
        If the largest component has fewer than ``min_points`` points (or there are no
        valid points), or ``radius="auto"`` finds no adjacent valid pixels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    xyz = check_organized(xyz, "xyz")
    min_points = check_int(min_points, "min_points", minimum=1)
    valid = _valid_mask(xyz)
    n_valid = int(valid.sum())
    if n_valid < min_points:
        raise ValueError(
            f"xyz has {n_valid} valid points, fewer than min_points={min_points}."
        )
    points = xyz.astype(np.float64)
    if isinstance(radius, str):
        if radius != "auto":
            raise ValueError(
                f"radius must be 'auto' or a positive number, but got {radius!r}."
            )
        spacings = _grid_spacings(points, valid)
        if spacings.size == 0 or not np.median(spacings) > 0:
            raise ValueError(
                "radius='auto' needs adjacent valid pixels at distinct positions, but "
                f"xyz has none ({n_valid} isolated valid points). Pass an absolute radius."
            )
        radius = AUTO_CLUSTER_SPACINGS * float(np.median(spacings))
    else:
        radius = check_positive(radius, "radius")

    height, width = valid.shape
    node = np.full((height, width), -1, dtype=np.intp)
    node[valid] = np.arange(n_valid)
    sources, targets = [], []
    # Right, down, down-right and down-left cover each 8-neighbour pair once.
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        r0, r1 = 0, height - dr
        c0, c1 = max(0, -dc), width - max(0, dc)
        a = (slice(r0, r1), slice(c0, c1))
        b = (slice(r0 + dr, r1 + dr), slice(c0 + dc, c1 + dc))
        linked = valid[a] & valid[b]
        linked[linked] = (
            np.linalg.norm(points[a][linked] - points[b][linked], axis=1) < radius
        )
        sources.append(node[a][linked])
        targets.append(node[b][linked])
    sources = np.concatenate(sources)
    targets = np.concatenate(targets)
    graph = coo_matrix(
        (np.ones(len(sources), dtype=np.int8), (sources, targets)),
        shape=(n_valid, n_valid),
    )
    n_components, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n_components)
    first_pixel = np.full(n_components, n_valid, dtype=np.intp)
    np.minimum.at(first_pixel, labels, np.arange(n_valid))
    candidates = np.flatnonzero(sizes == sizes.max())
    keep_label = candidates[np.argmin(first_pixel[candidates])]
    if sizes[keep_label] < min_points:
        raise ValueError(
            f"The largest connected component has {int(sizes[keep_label])} points, "
            f"fewer than min_points={min_points} (radius {radius:.6g}, "
            f"{n_components} components)."
        )

    cleaned = xyz.copy()
    cleaned[~valid] = np.nan
    drop = np.flatnonzero(valid)[labels != keep_label]
    cleaned.reshape(-1, 3)[drop] = np.nan
    logger.debug(
        "largest_cluster: %d components, kept %d of %d points (radius %.6g)",
        n_components,
        int(sizes[keep_label]),
        n_valid,
        radius,
    )
    return cleaned


# ---------------------------------------------------------------------------------------
# Resizing


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel: the input pixel holding its centre.

    Output pixel ``i`` has its centre at ``(i + 0.5) * n_in / n_out`` in input pixel
    units, so its source is ``floor((2 i + 1) n_in / (2 n_out))``, computed in
    integers to avoid rounding at exact pixel borders.
    """
    return ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in) // (2 * n_out)


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = _nearest_indices(array.shape[0], height)
    cols = _nearest_indices(array.shape[1], width)
    return np.ascontiguousarray(array[rows[:, None], cols[None, :]])


def resize_organized(xyz: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an organized cloud by nearest neighbour, keeping NaN as NaN.

    Each output pixel copies the input pixel that contains its centre, so points are
    never mixed, and :func:`resize_mask` with the same ``size`` picks the same pixels.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
    size : int or (height, width)
        Output size. An int gives a square.

    Returns
    -------
    ndarray of shape (height, width, 3), same float dtype as ``xyz``
    """
    xyz = check_organized(xyz, "xyz")
    height, width = _check_size(size)
    return _resize_nearest(xyz, height, width)


def resize_mask(mask: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) mask by nearest neighbour, with the pixel choice of
    :func:`resize_organized`.

    Returns an array of the same dtype as ``mask``.
    """
    array = np.asarray(mask)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"mask must have shape (H, W), but got {array.shape}.")
    height, width = _check_size(size)
    return _resize_nearest(array, height, width)


def resize_rgb(rgb: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image with Pillow's bicubic filter."""
    from PIL import Image

    array = np.asarray(rgb)
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"rgb must have shape (H, W, 3), but got {array.shape}.")
    if array.dtype != np.uint8:
        raise TypeError(
            f"rgb must have dtype uint8, but got {array.dtype}. Convert it with "
            "np.clip(rgb, 0, 255).astype(np.uint8)."
        )
    height, width = _check_size(size)
    image = Image.fromarray(np.ascontiguousarray(array))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


# ---------------------------------------------------------------------------------------
# Samples


def preprocess_sample(
    sample: Sample,
    *,
    size: int | tuple[int, int] | None = 224,
    remove_plane: bool = True,
    plane_kwargs: dict[str, Any] | None = None,
    cluster: bool = False,
    cluster_kwargs: dict[str, Any] | None = None,
) -> Sample:
    """Apply the preprocessing steps to a sample and return a new sample.

    The steps run in this order, each optional: :func:`remove_background` on the
    full-resolution xyz, :func:`largest_cluster`, then resizing of xyz and gt by
    nearest neighbour and of rgb by bicubic interpolation. The rgb image is not
    masked where the plane was removed.

    Parameters
    ----------
    sample : Sample
    size : int, (height, width) or None, default 224
        Output size. None keeps the input size.
    remove_plane : bool, default True
    plane_kwargs : dict, optional
        Keyword arguments for :func:`remove_background` (not ``return_plane``).
    cluster : bool, default False
        Keep only the largest connected component.
    cluster_kwargs : dict, optional
        Keyword arguments for :func:`largest_cluster`.

    Raises
    ------
    TypeError
        If ``sample`` is not a :class:`Sample`.
    ValueError
        If a step needs xyz and the sample has none, or a step fails.
    """
    if not isinstance(sample, Sample):
        raise TypeError(
            f"sample must be a zal3d_core.datasets.Sample, but got {type(sample).__name__}."
        )
    plane_kwargs = dict(plane_kwargs or {})
    if "return_plane" in plane_kwargs:
        raise ValueError("plane_kwargs must not contain 'return_plane'.")
    if (remove_plane or cluster) and sample.xyz is None:
        raise ValueError(
            f"Sample {sample.name!r} has no xyz, which plane removal and clustering "
            "need. Load it with 'xyz' in modalities, or pass remove_plane=False and "
            "cluster=False."
        )
    xyz, rgb, gt = sample.xyz, sample.rgb, sample.gt
    if remove_plane:
        try:
            xyz = remove_background(xyz, **plane_kwargs)
        except ValueError as error:
            # Name the scan, and the two ways out, for batch runs over many files.
            raise ValueError(
                f"{sample.path or sample.name}: background plane removal failed: {error} "
                "Change the border with plane_kwargs={'border': N} or skip the step with "
                "remove_plane=False (CLI: --plane-border N or --no-plane-removal when "
                "fitting; a saved model applies the settings it was fitted with)."
            ) from None
    if cluster:
        xyz = largest_cluster(xyz, **(cluster_kwargs or {}))
    if size is not None:
        height, width = _check_size(size)
        if xyz is not None:
            xyz = resize_organized(xyz, (height, width))
        if rgb is not None:
            rgb = resize_rgb(rgb, (height, width))
        if gt is not None:
            gt = resize_mask(gt, (height, width))
    return dataclasses.replace(sample, xyz=xyz, rgb=rgb, gt=gt)
