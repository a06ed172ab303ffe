"""Patch scores against a memory bank, and full-resolution anomaly maps."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage

from ._kernels import _knn
from ._numba import num_threads
from ._validation import as_float_array, check_int, check_magnitude, check_positive
from .coreset import check_feature_rows

__all__ = ["anomaly_map", "image_score", "nearest_neighbor_scores", "resize_anomaly_map"]

logger = logging.getLogger(__name__)

# Bank rows (and query rows) per Gram block: a block of float32 dot products takes
# at most DEFAULT_BLOCK_SIZE**2 * 4 bytes, 16 MiB.
DEFAULT_BLOCK_SIZE = 2048

# Rows kept per query from the float32 Gram pass beyond the k requested, to be
# re-ranked by exact float64 distance. While rounding leaves the k-th row in doubt,
# the list grows by CANDIDATE_GROWTH up to MAX_CANDIDATES, then a float64 scan of the
# bank takes over (see _BankSearch).
EXTRA_CANDIDATES = 3
CANDIDATE_GROWTH = 16
MAX_CANDIDATES = 1024

# Largest Gaussian blur, in multiples of the larger map side. A blur that wide already
# gives a nearly constant map, while scipy's filter time and kernel size grow linearly
# with sigma: about 0.5 s per 1000 pixels of sigma on a 224 x 224 map (2 CPU cores),
# and a 60 GiB kernel at sigma 1e9. Larger values are rejected.
MAX_SIGMA_PER_SIDE = 4

# Largest feature magnitude accepted. Distances between such rows, over up to 1e12
# columns, stay below 1e25, far inside the float32 range of the returned scores.
MAX_FEATURE = 1e18

# Smallest accepted largest magnitude of queries and bank together (all zeros
# pass). Squared float64 distances of smaller values underflow.
MIN_FEATURE = 1e-150

# Inputs whose largest magnitude is below this are scaled up by a power of two before
# the float32 pass. Float32 products of values near 1e-20 underflow to 0, and every
# bank row would look equally near, which leaves most queries to the float64 scan.
SMALL_FEATURE = 2.0**-16

# A float32 dot product is at most |p| |m| (Cauchy-Schwarz), so below this product of
# row norms every Gram entry is finite (float32 reaches 3.4e38). Larger rows skip the
# float32 pass and are searched by the float64 scan alone.
GRAM_NORM_LIMIT = 1e37


def nearest_neighbor_scores(
    queries: Any,
    bank: Any,
    n_reweight: int = 3,
    *,
    return_details: bool = False,
    block_size: int | None = None,
    n_jobs: int | None = None,
):
    """Score each query by its re-weighted distance to the nearest memory-bank row.

    For a query ``q`` with nearest bank row ``m*`` at Euclidean distance ``d*``, the
    support ``S`` is ``m*`` followed by the ``b - 1`` bank rows nearest to ``m*``,
    where ``b = min(n_reweight, n_bank)``. The score is PatchCore's re-weighted
    distance, in a form that cannot overflow::

        score = (1 - 1 / sum_{m in S} exp(|q - m| - d*)) * d*
              = (1 - exp(d*) / sum_{m in S} exp(|q - m|)) * d*

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
        Finite patch features to score.
    bank : array-like of shape (n_bank, n_features)
        Finite memory bank, at least one row.
    n_reweight : int, default 3
        Support size ``b``. Values above ``n_bank`` are clamped to ``n_bank``. With
        ``b == 1`` (``n_reweight=1`` or a bank of one row) nothing is re-weighted and
        the score is ``d*``.
    return_details : bool, default False
        Also return the distances, the nearest rows and the supports.
    block_size : int, optional
        Rows of the bank, and of the queries, per block of dot products; each block
        takes ``block_size**2 * 4`` bytes. Defaults to 2048 (16 MiB). The results do
        not depend on it.
    n_jobs : int, optional
        Numba threads for the exact distances; ``None`` keeps the current setting,
        ``-1`` uses all. The float32 products use BLAS with its own thread count.

    Returns
    -------
    scores : ndarray of shape (n_queries,), float32
    distances : ndarray of shape (n_queries,), float64
        ``d*``, only with ``return_details``.
    nearest : ndarray of shape (n_queries,), intp
        Index of ``m*``, only with ``return_details``.
    support : ndarray of shape (n_queries, b), intp
        Support rows, ``m*`` first, then by distance to ``m*``; only with
        ``return_details``.

    Raises
    ------
    ValueError
        If the arrays are not finite 2-D arrays with the same number of columns, a
        value exceeds 1e18 in magnitude (scores are float32), no value exceeds
        1e-150 in magnitude while some are nonzero, the bank is empty, or
        ``n_reweight`` or ``block_size`` is below 1.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    Nearest rows are those of an exact search by float64 sums of squared differences
    of the input values, ties to the lowest index, and every returned distance is
    such a sum. So the results do not depend on BLAS, its rounding or its thread
    count. Float32 BLAS products ``|q|^2 + |m|^2 - 2 q.m`` over blocks of bank rows
    only propose candidates, 3 more than needed per query. A worst-case rounding
    bound decides whether they suffice. Where more bank rows lie within rounding of
    the nearest, the search retries with up to 1024 candidates and then scans the
    bank in float64 for that query, which costs ``n_bank * n_features`` operations
    per query. Rows whose norms multiply to more than 1e37 would overflow the float32
    products, so such inputs are scanned in float64 throughout. Inputs whose largest
    magnitude is below 2**-16 are scaled by a power of two in the float32 copies, so
    that their products do not underflow. A float64 bank is
    copied to float32 for the BLAS pass, so pass float32 to avoid the copy. Memory
    beyond the inputs is one Gram block, 16 MiB by default, plus a few values per
    query.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.scoring import nearest_neighbor_scores
    >>> bank = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> scores = nearest_neighbor_scores([[0.1, 0.0], [2.0, 1.5]], bank, n_reweight=3)
    >>> [round(float(s), 4) for s in scores]
    [0.0824, 1.3839]
    """
    query_rows = check_feature_rows(queries, "queries", min_rows=0)
    bank_rows = check_feature_rows(bank, "bank", min_rows=1)
    largest = max(
        check_magnitude(query_rows, "queries", MAX_FEATURE),
        check_magnitude(bank_rows, "bank", MAX_FEATURE),
    )
    if 0.0 < largest < MIN_FEATURE:
        raise ValueError(
            f"queries and bank contain no value above {MIN_FEATURE:.0e} in magnitude "
            f"(the largest is {largest:.3g}), so their squared distances underflow "
            "float64 and the float32 scores would be 0. Rescale both by the same "
            "factor, e.g. divide them by their largest magnitude."
        )
    if query_rows.shape[1] != bank_rows.shape[1]:
        raise ValueError(
            f"queries must have as many columns as bank ({bank_rows.shape[1]}), but "
            f"got shape {query_rows.shape}. Extract both with the same backend."
        )
    n_reweight = check_int(n_reweight, "n_reweight", minimum=1)
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE
    block_size = check_int(block_size, "block_size", minimum=1)
    if not isinstance(return_details, bool):
        raise TypeError(
            f"return_details must be a bool, but got {type(return_details).__name__}."
        )

    n_queries = query_rows.shape[0]
    n_bank = bank_rows.shape[0]
    support_size = min(n_reweight, n_bank)
    logger.debug(
        "scoring %d queries against a bank of %d x %d, support size %d",
        n_queries,
        n_bank,
        bank_rows.shape[1],
        support_size,
    )

    with num_threads(n_jobs):
        support, support_d2 = _search_supports(
            query_rows, bank_rows, support_size, block_size, _gram_exponent(largest)
        )

    distances = np.sqrt(support_d2)
    nearest_distance = distances[:, 0]
    if support_size == 1:
        scores = nearest_distance.astype(np.float32)
    else:
        # Every support row is at least d* from q, so each exponent is >= 0 and the
        # sum is >= 1. An overflow to inf gives the limit weight 1.
        with np.errstate(over="ignore"):
            total = np.exp(distances - nearest_distance[:, None]).sum(axis=1)
        scores = ((1.0 - 1.0 / total) * nearest_distance).astype(np.float32)

    if return_details:
        return scores, nearest_distance, support[:, 0].copy(), support
    return scores


def _gram_exponent(largest: float) -> int:
    """Return the power of two that the float32 copies are scaled by: 0, or, when
    the largest input magnitude is below ``SMALL_FEATURE``, the one that brings it
    into [1, 2)."""
    if 0.0 < largest < SMALL_FEATURE:
        return 1 - math.frexp(largest)[1]
    return 0


def _float32_rows(rows: np.ndarray, exponent: int) -> np.ndarray:
    """Return ``rows * 2**exponent`` as C-contiguous float32, without a copy when
    ``rows`` is float32 and ``exponent`` is 0."""
    if exponent:
        # Scaled before the cast, so float64 values below the float32 range survive.
        rows = np.ldexp(rows, exponent)
    with np.errstate(over="ignore"):  # rows beyond float32 are scanned in float64
        return np.ascontiguousarray(rows, np.float32)


def _search_supports(
    queries: np.ndarray,
    bank: np.ndarray,
    support_size: int,
    block_size: int,
    exponent: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the support rows of each query and their exact squared distances.

    The float32 copies that propose candidates are scaled by ``2**exponent``.
    """
    n_queries = queries.shape[0]
    if n_queries == 0:
        return np.empty((0, support_size), np.intp), np.empty((0, support_size))

    bank_search = _BankSearch(bank, block_size, exponent)
    queries32 = _float32_rows(queries, exponent)
    query_rows = np.arange(n_queries)
    nearest, _ = bank_search.nearest(
        queries,
        query_rows,
        queries32,
        1,
        np.full(n_queries, -1, np.intp),
    )
    nearest = nearest[:, 0]

    support = nearest[:, None]
    if support_size > 1:
        # One neighbour search per distinct nearest row, excluding the row itself,
        # which always comes first in its support.
        centres, inverse = np.unique(nearest, return_inverse=True)
        neighbours, _ = bank_search.nearest(
            bank, centres, bank_search.bank32[centres], support_size - 1, centres
        )
        support = np.concatenate([centres[:, None], neighbours], axis=1)[inverse]

    support = np.ascontiguousarray(support, np.intp)
    support_d2 = np.empty(support.shape)
    _knn.sq_distances_to_rows(queries, query_rows, bank, support, support_d2)
    return support, support_d2


def _sq_norms(rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape[0])
    _knn.row_sq_norms(rows, out)
    return out


class _BankSearch:
    """Exact k-nearest-neighbour search in a bank, with float32 BLAS candidates.

    Each search keeps the ``k + EXTRA_CANDIDATES`` rows with the smallest
    approximate squared distance ``|p|^2 + |m|^2 - 2 p.m`` (float32 Gram blocks) and
    re-ranks them by exact float64 distance. Rounding changes an approximate value by
    at most ``bound`` (see ``_rounding_bound``). When the k-th exact distance is
    below the largest approximate value in the list minus that bound, no row outside
    the list can be nearer or tie, so the result is exact. Otherwise the list grows
    by ``CANDIDATE_GROWTH`` up to ``MAX_CANDIDATES`` rows, and beyond that the point
    is searched by a float64 scan of the whole bank.
    """

    def __init__(self, bank: np.ndarray, block_size: int, exponent: int = 0):
        self.bank = bank
        # The float32 copies of the bank and of the points are scaled by
        # 2**exponent, so approximate squared distances are 4**exponent times the
        # exact ones.
        self.exponent = exponent
        self.bank32 = _float32_rows(bank, exponent)
        self.bank_norms = _sq_norms(self.bank32)
        self.block_size = block_size
        self.max_norm = float(np.sqrt(self.bank_norms.max()))

    def nearest(
        self,
        points: np.ndarray,
        point_rows: np.ndarray,
        points32: np.ndarray,
        k: int,
        exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` nearest bank rows of ``points[point_rows]`` and their
        exact squared distances, ties to the lower index, skipping bank row
        ``exclude[i]`` for point ``i`` (-1 skips none).

        ``points32`` contains the float32 rows of ``points[point_rows]``, scaled by
        ``2**self.exponent``, and ``k`` must not exceed the number of bank rows that
        are not skipped.
        """
        n_points = point_rows.shape[0]
        n_bank = self.bank.shape[0]
        available = n_bank - 1 if (exclude >= 0).any() else n_bank
        norms = _sq_norms(points32)
        bound = _rounding_bound(norms, self.max_norm, self.bank.shape[1])
        indices = np.empty((n_points, k), np.intp)
        distances = np.empty((n_points, k))

        pending = np.arange(n_points)
        width = min(available, k + EXTRA_CANDIDATES)
        if not np.sqrt(norms.max()) * self.max_norm <= GRAM_NORM_LIMIT:
            # Gram entries could overflow float32 (or a float64 row did not fit in
            # float32 at all): skip straight to the exact float64 scan.
            width = MAX_CANDIDATES + 1
        while pending.size and width <= MAX_CANDIDATES:
            unresolved = []
            chunk_size = max(1, 2**20 // width)
            for c0 in range(0, pending.size, chunk_size):
                chunk = pending[c0 : c0 + chunk_size]
                approx, candidates = self._candidates(
                    points32[chunk], norms[chunk], width, exclude[chunk]
                )
                exact = np.empty(candidates.shape)
                _knn.sq_distances_to_rows(
                    points, point_rows[chunk], self.bank, candidates, exact
                )
                order = np.lexsort((candidates, exact), axis=-1)[:, :k]
                candidates = np.take_along_axis(candidates, order, axis=1)
                exact = np.take_along_axis(exact, order, axis=1)
                if width == available:
                    done = np.ones(chunk.size, bool)
                else:
                    kth = np.ldexp(exact[:, k - 1], 2 * self.exponent)
                    done = kth < approx[:, -1] - bound[chunk]
                indices[chunk[done]] = candidates[done]
                distances[chunk[done]] = exact[done]
                unresolved.append(chunk[~done])
            pending = np.concatenate(unresolved)
            next_width = min(available, width * CANDIDATE_GROWTH)
            if pending.size and next_width <= MAX_CANDIDATES:
                logger.debug(
                    "%d points are not resolved by %d float32 candidates, searching "
                    "again with %d",
                    pending.size,
                    width,
                    next_width,
                )
            width = next_width

        if pending.size:
            logger.info(
                "%d points are not resolved by %d float32 candidates, scanning the "
                "bank in float64 for them",
                pending.size,
                MAX_CANDIDATES,
            )
            scan_d2 = np.empty((pending.size, k))
            scan_idx = np.empty((pending.size, k), np.intp)
            rows = point_rows[pending]
            _knn.exact_topk_scan(
                points, rows, self.bank, exclude[pending], scan_d2, scan_idx
            )
            indices[pending] = scan_idx
            distances[pending] = scan_d2
        return indices, distances

    def _candidates(
        self, points32: np.ndarray, norms: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` smallest approximate squared distances of each point to
        the bank, ascending, and their bank rows, from float32 Gram blocks."""
        n_points = points32.shape[0]
        n_bank = self.bank32.shape[0]
        top_d2 = np.full((n_points, k), np.inf)
        top_idx = np.full((n_points, k), n_bank, np.intp)
        point_block = min(n_points, self.block_size)
        bank_block = min(n_bank, self.block_size)
        buffer = np.empty(point_block * bank_block, np.float32)

        # Bank blocks must come in increasing order for update_topk's tie rule.
        # NOTE: update_topk runs on one thread. Run in parallel right after each BLAS
        # call, it made the whole search about 1.3x slower on 2 cores, because OpenBLAS
        # worker threads keep spinning for a while after a product. On many cores
        # this serial merge may take a larger share of the time.
        for b0 in range(0, n_bank, bank_block):
            b1 = min(n_bank, b0 + bank_block)
            block_rows = self.bank32[b0:b1]
            for p0 in range(0, n_points, point_block):
                p1 = min(n_points, p0 + point_block)
                gram = buffer[: (p1 - p0) * (b1 - b0)].reshape(p1 - p0, b1 - b0)
                np.matmul(points32[p0:p1], block_rows.T, out=gram)
                _knn.update_topk(
                    gram,
                    norms[p0:p1],
                    self.bank_norms[b0:b1],
                    b0,
                    exclude[p0:p1],
                    top_d2[p0:p1],
                    top_idx[p0:p1],
                )
        return top_d2, top_idx


def _rounding_bound(
    point_norms: np.ndarray, max_norm: float, n_dims: int
) -> np.ndarray:
    """Return, per point, a bound on the rounding error of its approximate squared
    distance to any bank row, against the float64 distance of the input values.

    A float32 dot product of length D, summed in any order, is off by at most
    ``gamma * |p| |m|`` with ``gamma = D u / (1 - D u)`` and ``u = 2**-24``: the
    standard worst-case bound of floating-point summation. Rounding float64 inputs to
    float32 moves the squared distance by at most ``2 u (|p| + |m|)^2``. Both terms,
    and the float64 arithmetic, fit in ``(2 gamma + 8 u) (|p| + M)^2``, where M is
    the largest bank row norm.

    Those relative bounds assume no underflow. A product or an input value that
    falls below the normal float32 range is off by at most ``eta = 2**-150`` more.
    That adds at most ``2 D eta`` to the squared distance through the dot product
    and ``4 sqrt(D) eta (|p| + M) + 4 D eta**2`` through the rounded inputs, and the
    last term of the returned bound, ``16 D eta (1 + |p| + M)``, covers both.
    """
    unit = 2.0**-24
    gamma = n_dims * unit / (1.0 - n_dims * unit)
    norm_sum = np.sqrt(point_norms) + max_norm
    underflow = 2.0**-146 * n_dims * (1.0 + norm_sum)
    return (2.0 * gamma + 8.0 * unit) * norm_sum**2 + underflow


def _check_pair(value: Any, name: str) -> tuple[int, int]:
    if (
        isinstance(value, (str, bytes))
        or not hasattr(value, "__len__")
        or len(value) != 2
    ):
        raise TypeError(
            f"{name} must be a pair of ints (rows, columns), but got {value!r}."
        )
    rows, cols = (check_int(v, name, minimum=1) for v in value)
    return rows, cols


def anomaly_map(
    patch_scores: Any,
    patch_grid: Any,
    image_shape: Any,
    valid: Any = None,
    *,
    sigma: float = 4.0,
) -> np.ndarray:
    """Turn patch scores into a smoothed full-resolution anomaly map.

    Empty patches (NaN) take the minimum finite score. The grid is then upsampled
    bilinearly to ``image_shape`` with the half-pixel convention of
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    blurred with ``scipy.ndimage.gaussian_filter`` (``truncate=4.0``,
    ``mode="reflect"``) and set to NaN where ``valid`` is False.

    Parameters
    ----------
    patch_scores : array-like of shape (gh * gw,) or (gh, gw)
        Score per patch in row-major grid order, NaN for patches without points.
    patch_grid : pair of int
        Grid shape ``(gh, gw)``.
    image_shape : pair of int
        Output shape ``(H, W)``.
    valid : array-like of bool, shape (H, W), optional
        Pixels that hold a point; the others become NaN. ``None`` keeps all pixels.
    sigma : float, default 4.0
        Standard deviation of the Gaussian blur in output pixels; 0 disables it. At
        most ``4 * max(H, W)`` (``MAX_SIGMA_PER_SIDE`` times the larger side).

    Returns
    -------
    ndarray of shape (H, W), float32
        All NaN when no patch score is finite.

    Raises
    ------
    ValueError
        If the shapes do not match, a score is infinite, or ``sigma`` is outside
        ``[0, 4 * max(H, W)]``.
    TypeError
        If ``valid`` is not boolean, or a shape is not a pair of ints.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.scoring import anomaly_map
    >>> anomaly_map([[0.0, 1.0], [2.0, 3.0]], (2, 2), (4, 4), sigma=0)[0].tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    grid_rows, grid_cols = _check_pair(patch_grid, "patch_grid")
    height, width = _check_pair(image_shape, "image_shape")
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    if sigma > MAX_SIGMA_PER_SIDE * max(height, width):
        raise ValueError(
            f"sigma must be at most {MAX_SIGMA_PER_SIDE} times the larger side of "
            f"image_shape {(height, width)}, {MAX_SIGMA_PER_SIDE * max(height, width)} "
            f"pixels, but got {sigma!r}. Typical values are 2 to 8 pixels."
        )
    scores = np.asarray(as_float_array(patch_scores, "patch_scores"), np.float64)
    if scores.shape == (grid_rows * grid_cols,):
        scores = scores.reshape(grid_rows, grid_cols)
    elif scores.shape != (grid_rows, grid_cols):
        raise ValueError(
            f"patch_scores must have shape ({grid_rows * grid_cols},) or "
            f"({grid_rows}, {grid_cols}) to match patch_grid, but got {scores.shape}."
        )
    if np.isinf(scores).any():
        raise ValueError(
            "patch_scores contains infinite values. Use NaN for empty patches."
        )
    mask = None
    if valid is not None:
        mask = np.asarray(valid)
        if mask.dtype != np.bool_:
            raise TypeError(
                f"valid must be a boolean array, but got dtype {mask.dtype}. Pass "
                "e.g. ~np.isnan(xyz).any(axis=-1)."
            )
        if mask.shape != (height, width):
            raise ValueError(
                f"valid must have shape {(height, width)} to match image_shape, but "
                f"got {mask.shape}."
            )

    finite = ~np.isnan(scores)
    if not finite.any():
        logger.warning("anomaly_map: no patch has a finite score; the map is all NaN")
        return np.full((height, width), np.nan, np.float32)
    scores = np.where(finite, scores, scores[finite].min())

    rows_weights = bilinear_weights(grid_rows, height)
    cols_weights = bilinear_weights(grid_cols, width)
    upsampled = rows_weights @ scores @ cols_weights.T
    if sigma > 0:
        upsampled = ndimage.gaussian_filter(
            upsampled, sigma, mode="reflect", truncate=4.0
        )
    result = upsampled.astype(np.float32)
    if mask is not None:
        result[~mask] = np.nan
    return result


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """Return the ``(n_out, n_in)`` matrix of 1-D bilinear resampling weights.

    Output pixel ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5``, clamped
    to ``[0, n_in - 1]``: the ``align_corners=False`` convention of PyTorch and of
    OpenCV's ``INTER_LINEAR``.
    """
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    source = np.clip(source, 0.0, n_in - 1)
    lower = np.floor(source).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    fraction = source - lower
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lower), 1.0 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


def resize_anomaly_map(anomaly_map: Any, image_shape: Any, valid: Any = None) -> np.ndarray:
    """Resample an anomaly map to another image size, for example the scan's own.

    Missing pixels (NaN) take the minimum finite score, the map is resampled
    bilinearly (``align_corners=False`` convention, as :func:`anomaly_map`), and the
    output is NaN where ``valid`` is False or, without ``valid``, where the
    nearest-neighbour resampling of the input's NaN pattern is NaN.

    Parameters
    ----------
    anomaly_map : array-like of shape (h, w)
    image_shape : pair of int
        Output ``(H, W)``.
    valid : array-like of bool, shape (H, W), optional
        Pixels of the output that hold a point.

    Returns
    -------
    ndarray of shape (H, W), float32
    """
    values = as_float_array(anomaly_map, "anomaly_map")
    if values.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D, but got shape {values.shape}.")
    height, width = _check_pair(image_shape, "image_shape")
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (height, width):
            raise ValueError(
                f"valid must have shape {(height, width)}, but got {valid.shape}."
            )
    finite = np.isfinite(values)
    if np.isinf(values).any():
        raise ValueError("anomaly_map contains infinite values; only NaN marks missing pixels.")
    fill = float(values[finite].min()) if finite.any() else 0.0
    filled = np.where(finite, values, fill).astype(np.float64)
    rows = bilinear_weights(values.shape[0], height)
    columns = bilinear_weights(values.shape[1], width)
    out = (rows @ filled @ columns.T).astype(np.float32)
    if valid is None:
        pick_rows = np.minimum((np.arange(height) + 0.5) * values.shape[0] / height, values.shape[0] - 1).astype(np.intp)
        pick_cols = np.minimum((np.arange(width) + 0.5) * values.shape[1] / width, values.shape[1] - 1).astype(np.intp)
        valid = finite[np.ix_(pick_rows, pick_cols)]
    out[~valid] = np.nan
    return out


def image_score(anomaly_map: Any) -> float:
    """Return the maximum of an anomaly map over its non-NaN pixels, NaN if none.

    Raises ValueError if the map contains infinite values, which no anomaly map of
    :func:`anomaly_map` holds.
    """
    values = np.asarray(as_float_array(anomaly_map, "anomaly_map"))
    if np.isinf(values).any():
        raise ValueError(
            f"anomaly_map contains {int(np.isinf(values).sum())} infinite values. Mark "
            "pixels without a score with NaN."
        )
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan")
    return float(finite.max())
