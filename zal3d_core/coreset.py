"""Memory-bank reduction by k-center greedy selection (the PatchCore coreset)."""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import numpy as np

from ._kernels import _coreset
from ._kernels._knn import count_nonfinite_rows
from ._numba import num_threads
from ._validation import (
    as_float_array,
    check_int,
    check_magnitude,
    check_rng,
    largest_magnitude,
)

__all__ = ["greedy_coreset"]

logger = logging.getLogger(__name__)

# Greedy steps per kernel call when a progress bar is shown.
_PROGRESS_STEPS = 64

# Largest feature magnitude that greedy_coreset and nearest_neighbor_scores accept.
# Float32 squared distances of larger values overflow, and rows at infinite distance
# all look equally far. Below it, greedy_coreset scales rows that could overflow.
MAX_FEATURE = 1e18

# Stored rows whose largest magnitude is below this are scaled up by a power of two.
# Squared float32 differences of values near 1e-20 underflow to 0, and rows that all
# lie at distance 0 would be picked in index order.
_SMALL_FEATURE = 2.0**-16


def check_feature_rows(features: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Check a finite ``(N, D)`` float array with D >= 1 without copying it.

    Integer and boolean input is converted to float64; float32 and float64 arrays are
    kept as they are, made C-contiguous. Finiteness is checked by a kernel, which
    needs no temporary array the size of ``features``.
    """
    array = check_feature_shape(features, name, min_rows=min_rows)
    check_feature_values(array, name)
    return array


def check_feature_shape(features: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Do the checks of ``check_feature_rows`` that do not read the values."""
    array = as_float_array(features, name)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, D), but got {array.shape}. Pass one row per "
            "patch, e.g. features.reshape(-1, features.shape[-1])."
        )
    if array.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one column, but got {array.shape}."
        )
    if array.shape[0] < min_rows:
        raise ValueError(
            f"{name} must have at least {min_rows} row(s), but got shape {array.shape}."
        )
    return np.ascontiguousarray(array)


def check_feature_values(array: np.ndarray, name: str) -> None:
    """Raise ValueError unless every value of the 2-D ``array`` is finite and at most
    ``MAX_FEATURE`` in magnitude."""
    bad = int(count_nonfinite_rows(array))
    if bad:
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad} of {array.shape[0]} "
            "rows. Features must be finite, so drop the rows of missing patches first."
        )
    check_magnitude(array, name, MAX_FEATURE)


def _resolve_count(n: Any, ratio: Any, n_rows: int) -> int:
    if (n is None) == (ratio is None):
        given = "both" if n is not None else "neither"
        raise ValueError(
            f"pass exactly one of n (number of rows) or ratio (fraction of rows), but "
            f"{given} was given."
        )
    if n is not None:
        count = check_int(n, "n", minimum=0)
        if count > n_rows:
            raise ValueError(
                f"n={count} requests more rows than features has ({n_rows}). Pass "
                f"n <= {n_rows}, or ratio <= 1."
            )
        return count
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"ratio must be a real number, but got {type(ratio).__name__}.")
    ratio = float(ratio)
    if not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number in [0, 1], but got {ratio!r}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(
            f"ratio must be in [0, 1], but got {ratio!r}, which requests "
            f"{n_rows * ratio:g} rows of {n_rows}. Pass a fraction of the rows, "
            "e.g. ratio=0.1."
        )
    return int(n_rows * ratio)


def build_panels(
    features: np.ndarray, projection_dim: int, seed: Any, name: str = "features"
) -> tuple[np.ndarray, bool]:
    """Store the rows of ``features``, projected when they have more columns than
    ``projection_dim``, as the zero-padded panels that ``greedy_steps`` reads.

    The projection matrix has shape ``(D, projection_dim)`` and entries drawn from
    N(0, 1 / projection_dim) by ``numpy.random.default_rng(seed)``, which keeps
    squared distances unbiased (Johnson-Lindenstrauss). A Numba kernel forms the
    product in the dtype of ``features``, summing over the columns in index order,
    so the panels are bit-identical for any thread count and any BLAS library.
    Projected panels are float32; unprojected panels keep the dtype of ``features``.

    ``features`` must have passed ``check_feature_shape``. Its values are checked as
    ``check_feature_values`` does, in the same pass as the projection, and the same
    ValueError names ``name``. Returns the panels and whether they were projected.
    """
    rng = check_rng(seed, "seed")
    n_rows, n_dims = features.shape
    block = _coreset.ROW_BLOCK
    n_blocks = (n_rows + block - 1) // block
    if n_dims <= projection_dim:
        check_feature_values(features, name)
        panels = np.zeros((n_blocks, n_dims, block), features.dtype)
        for first in range(0, n_rows, block):
            part = features[first : first + block]
            panels[first // block, :, : part.shape[0]] = part.T
        return panels, False

    matrix = rng.standard_normal((n_dims, projection_dim)) / math.sqrt(projection_dim)
    matrix = matrix.astype(features.dtype)
    panels = np.zeros((n_blocks, projection_dim, block), np.float32)
    if _coreset.project_panels(features, matrix, panels, n_rows, MAX_FEATURE):
        check_feature_values(features, name)
        raise AssertionError("project_panels flagged values that pass the checks")
    if largest_magnitude(panels) < _SMALL_FEATURE:
        # Projected values this small lose bits when rounded to float32, or round
        # to 0. A matrix scaled by a power of two scales every product and sum
        # exactly, so the panels equal 2**exponent times the unscaled ones wherever
        # those did not underflow.
        exponent = _rescale_exponent(largest_magnitude(features), matrix)
        if exponent:
            np.ldexp(matrix, exponent, out=matrix)
            _coreset.project_panels(features, matrix, panels, n_rows, math.inf)
            logger.debug("greedy coreset: projected with the matrix scaled by 2**%d", exponent)
    return panels, True


def _rescale_exponent(largest: float, matrix: np.ndarray) -> int:
    """Return the power of two that brings ``largest`` to about 1 without the
    scaled ``matrix`` overflowing, or 0 when ``largest`` is 0."""
    if largest == 0.0:
        return 0
    exponent = -math.frexp(largest)[1]
    headroom = np.finfo(matrix.dtype).max / (4.0 * matrix.shape[0] * largest_magnitude(matrix))
    return min(exponent, math.frexp(headroom)[1] - 1)


def greedy_coreset(
    features: Any,
    n: int | None = None,
    ratio: float | None = None,
    projection_dim: int = 128,
    seed: Any = 0,
    start: int = 0,
    *,
    progress: bool = False,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Select a coreset of rows by k-center greedy (farthest-point) selection.

    The first pick is ``start``. Each later pick is the row farthest, in Euclidean
    distance, from the rows selected so far, the lowest index on ties. Extra memory
    is a copy of the (projected) features, one distance per row and a copy of the
    selected rows: no N x N or N x n matrix is formed.

    Parameters
    ----------
    features : array-like of shape (n_rows, n_features)
        Finite patch features. float32 and float64 are used as given; integers are
        converted to float64.
    n : int, optional
        Number of rows to select, ``0 <= n <= n_rows``.
    ratio : float, optional
        Fraction of rows to select, in ``[0, 1]``; the count is ``int(n_rows * ratio)``,
        rounded down, so a ratio that gives less than one row selects none. Pass
        exactly one of ``n`` and ``ratio``.
    projection_dim : int, default 128
        Features with more columns are first projected to this many dimensions with a
        Gaussian random matrix (see Notes). Features with at most this many columns
        are used as they are.
    seed : int or numpy.random.Generator, default 0
        Seed of the projection matrix. The same seed gives the same picks.
    start : int, default 0
        Index of the first pick, in ``[0, n_rows)``.
    progress : bool, default False
        Show a tqdm progress bar over the steps, if tqdm is installed.
    n_jobs : int, optional
        Numba threads for the projection and the steps; ``None`` keeps the current
        setting, ``-1`` uses all. The picks do not depend on it. The threads meet at
        a barrier about once per pick, so when other processes keep the cores busy,
        ``n_jobs=1`` can be faster.

    Returns
    -------
    ndarray of shape (n_selected,), intp
        Distinct row indices in pick order, ``start`` first. Empty when the requested
        count is 0.

    Raises
    ------
    ValueError
        If both or neither of ``n`` and ``ratio`` are given, the requested count exceeds
        ``n_rows``, ``start`` is out of range, ``projection_dim < 1``, or the features
        are not a finite 2-D array.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    The projection has entries drawn from N(0, 1 / projection_dim) by
    ``numpy.random.default_rng(seed)``. A Numba kernel forms the projected rows in
    the dtype of the features, summing over the columns in index order, and rounds
    them to float32. Squared distances are summed over the dimensions in index order in the
    dtype of the rows compared: float32 for projected or float32 features, float64
    for float64 features that are not projected. No sum is split or reordered, so the
    picks are bit-identical for a seed whatever the Numba thread count or BLAS
    library. Near-ties
    within float32 rounding may be broken differently from a float64 computation.
    Rows are kept in blocks of 1024. A step only updates the blocks whose maximum
    distance could still exceed that of the blocks already updated. The other blocks
    apply the picks they missed later, in one pass over their rows. This changes the
    order of the work, never a distance or a pick.
    Once every unselected row has distance 0 (duplicate rows), the remaining picks
    are the unselected rows in index order. Rows with values near the accepted
    1e18, whose float32 squared distances could overflow, are scaled by a power of
    two first, which scales every distance exactly and changes no pick. Rows whose
    largest magnitude is below 2**-16, whose squared differences could underflow, are
    scaled up the same way (the projection matrix too, before projecting).

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.coreset import greedy_coreset
    >>> points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 3.0]])
    >>> greedy_coreset(points, n=3).tolist()
    [0, 2, 3]
    """
    array = check_feature_shape(features, "features")
    n_rows, n_dims = array.shape
    count = _resolve_count(n, ratio, n_rows)
    projection_dim = check_int(projection_dim, "projection_dim", minimum=1)
    start = check_int(start, "start")
    if not 0 <= start < n_rows:
        raise ValueError(
            f"start must be a row index in [0, {n_rows}), but got {start}."
        )
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, but got {type(progress).__name__}.")

    selected = np.empty(count, np.intp)
    if count == 0:
        check_rng(seed, "seed")
        check_feature_values(array, "features")
        logger.info("greedy coreset: 0 of %d rows requested, nothing to select", n_rows)
        return selected

    with num_threads(n_jobs) as threads:
        if n_dims > projection_dim:
            logger.info(
                "greedy coreset: projecting %d x %d features to %d dimensions",
                n_rows,
                n_dims,
                projection_dim,
            )
        panels, projected = build_panels(array, projection_dim, seed)
        exponent = _scale_to_fit(panels)
        logger.info("greedy coreset: selecting %d of %d rows", count, n_rows)
        # A round updates up to one block per thread, each split into up to 4 lane
        # ranges so that the threads get even shares. Ranges stay at 256 lanes or
        # more, because shorter inner loops run much slower (64 lanes ran at about
        # half speed in a test).
        n_parts = min(threads, _coreset.ROW_BLOCK // 256)
        radius2, pairs = _run_steps(
            panels, n_rows, selected, start, progress, threads, n_parts
        )
    total_pairs = count * panels.shape[0]
    logger.debug(
        "greedy coreset: applied %d of %d (pick, block) pairs (%.1f%%)",
        pairs,
        total_pairs,
        100.0 * pairs / total_pairs,
    )
    logger.info(
        "greedy coreset: covering radius %.6g in the %s space",
        math.ldexp(math.sqrt(radius2), -exponent),
        "projected" if projected else "feature",
    )
    return selected


def _scale_to_fit(panels: np.ndarray) -> int:
    """Scale ``panels`` in place by a power of two so no squared distance overflows
    or underflows, and return its exponent (0 when the panels fit as they are).

    A squared distance between rows is at most ``n_dims * (2 * largest)**2``. When
    that could exceed half the largest value of the panel dtype, the panels are
    scaled down. When ``largest`` is below ``_SMALL_FEATURE``, they are scaled up
    until it lies in [1, 2), which loses no bit. Either factor scales every distance
    exactly and so changes no pick, except that picks no longer fall to index order
    where squared differences underflowed.
    """
    largest = largest_magnitude(panels)
    n_dims = panels.shape[1]
    fits = math.sqrt(np.finfo(panels.dtype).max / 2 / n_dims) / 2
    if largest > fits:
        exponent = -math.ceil(math.log2(largest / fits))
        reason = "overflow"
    elif 0.0 < largest < _SMALL_FEATURE:
        exponent = 1 - math.frexp(largest)[1]
        reason = "underflow"
    else:
        return 0
    np.ldexp(panels, exponent, out=panels)
    logger.debug("greedy coreset: scaled the panels by 2**%d to avoid %s", exponent, reason)
    return exponent


def _run_steps(
    panels: np.ndarray,
    n_rows: int,
    selected: np.ndarray,
    start: int,
    progress: bool,
    blocks_per_round: int,
    n_parts: int,
) -> tuple[float, int]:
    """Fill ``selected`` by greedy steps.

    Each round of a step updates up to ``blocks_per_round`` blocks, split into
    ``n_parts`` lane ranges that run in parallel when ``n_parts > 1``. The picks do
    not depend on either. Returns the squared covering radius and the number of
    (pick, block) pairs whose distances were computed, at most
    ``len(selected) * n_blocks``.
    """
    count = selected.shape[0]
    n_blocks, n_dims, block = panels.shape
    blocks_per_round = max(1, min(blocks_per_round, n_blocks))
    min_d2 = np.full(n_rows, np.inf, panels.dtype)
    centres = np.empty((count, n_dims), panels.dtype)
    applied = np.zeros(n_blocks, np.int64)
    block_max = np.full(n_blocks, np.inf, panels.dtype)
    chosen = np.empty(blocks_per_round, np.int64)
    part_max = np.empty(n_parts * blocks_per_round, panels.dtype)
    lanes = -(-block // n_parts)
    scratch = np.empty((n_parts * blocks_per_round, 3, lanes), panels.dtype)
    selected[0] = start
    state = (min_d2, selected, centres, applied, block_max)
    work = (n_parts, chosen, part_max, scratch)

    # Running to step count + 1 applies the last pick, so the kernel returns the
    # covering radius of the whole selection.
    bar = _progress_bar(count) if progress else None
    if bar is None:
        radius2 = _coreset.greedy_steps(panels, n_rows, *state, 1, count + 1, *work)
        return float(radius2), int(applied.sum())
    radius2 = 0.0
    with bar:
        bar.update(1)
        for first in range(1, count + 1, _PROGRESS_STEPS):
            stop = min(first + _PROGRESS_STEPS, count + 1)
            radius2 = _coreset.greedy_steps(panels, n_rows, *state, first, stop, *work)
            bar.update(min(stop, count) - first)
    return float(radius2), int(applied.sum())


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.warning(
            "progress=True, but tqdm is not installed, so no bar is shown. Install it "
            "with pip install tqdm."
        )
        return None
    return tqdm(total=total, desc="greedy coreset", unit="pick")
