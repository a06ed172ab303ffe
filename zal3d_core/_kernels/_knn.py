"""Brute-force k-nearest-neighbour kernels that work on one block of a Gram matrix.

The caller computes a block ``gram = queries @ bank_block.T`` with BLAS and passes it
here with the squared row norms. ``update_topk`` turns the block into approximate
squared distances ``|q|^2 + |m|^2 - 2 q.m`` and merges them into a running list of the
``k`` nearest rows of each query. ``sq_distances_to_rows`` then recomputes the squared
distances of the chosen rows in float64 as sums of squared differences.

The parallel kernels give each query row to one thread, and no sum is split across
threads, so the results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import jit


@jit(parallel=True)
def count_nonfinite_rows(values):
    """Return the number of rows of a 2-D array that contain NaN or infinity."""
    n_rows, n_cols = values.shape
    flags = np.zeros(n_rows, np.uint8)
    for i in prange(n_rows):
        for k in range(n_cols):
            if not np.isfinite(values[i, k]):
                flags[i] = 1
                break
    total = 0
    for i in range(n_rows):
        total += flags[i]
    return total


@jit(parallel=True)
def row_sq_norms(values, out):
    """Write the squared norm of each row of ``values`` into ``out``, summed in float64.

    Fast-math may reorder this sum, which is still computed by one thread per row.
    The norms only rank candidates, and every returned distance is recomputed by
    ``sq_distances_to_rows``.
    """
    n_rows, n_cols = values.shape
    for i in prange(n_rows):
        total = 0.0
        for k in range(n_cols):
            value = np.float64(values[i, k])
            total += value * value
        out[i] = total


@jit
def update_topk(gram, query_norms, bank_norms, offset, exclude, top_d2, top_idx):
    """Merge one Gram block into the running ``k`` nearest rows of each query.

    ``gram[i, j]`` is the dot product of query ``i`` with bank row ``offset + j``.
    ``top_d2`` and ``top_idx`` of shape (n_queries, k) stay sorted by squared
    distance, and negative approximations are clamped to 0. Blocks must come in
    increasing ``offset``: an equal distance never displaces a stored row, so ties
    keep the lowest index. Bank row ``exclude[i]`` is skipped for query ``i`` (pass
    -1 to skip none).
    """
    n_queries, n_cols = gram.shape
    k = top_d2.shape[1]
    for i in range(n_queries):
        query_norm = query_norms[i]
        skip = exclude[i] - offset
        worst = top_d2[i, k - 1]
        for j in range(n_cols):
            d2 = query_norm + bank_norms[j] - 2.0 * np.float64(gram[i, j])
            d2 = max(d2, 0.0)
            if d2 < worst and j != skip:
                pos = k - 1
                while pos > 0 and top_d2[i, pos - 1] > d2:
                    top_d2[i, pos] = top_d2[i, pos - 1]
                    top_idx[i, pos] = top_idx[i, pos - 1]
                    pos -= 1
                top_d2[i, pos] = d2
                top_idx[i, pos] = offset + j
                worst = top_d2[i, k - 1]


@jit(parallel=True, strict=True)
def sq_distances_to_rows(points, point_rows, bank, bank_rows, out):
    """Write ``|points[point_rows[i]] - bank[bank_rows[i, j]]|^2`` into ``out[i, j]``.

    Sums run in float64 over the dimensions in index order. A bank index outside
    ``[0, len(bank))`` gives ``inf``.
    """
    n_pairs, width = bank_rows.shape
    n_bank, n_dims = bank.shape
    for i in prange(n_pairs):
        p = point_rows[i]
        for j in range(width):
            m = bank_rows[i, j]
            if m < 0 or m >= n_bank:
                out[i, j] = np.inf
                continue
            total = 0.0
            for k in range(n_dims):
                diff = np.float64(points[p, k]) - np.float64(bank[m, k])
                total += diff * diff
            out[i, j] = total


@jit(parallel=True, strict=True)
def exact_topk_scan(points, point_rows, bank, exclude, top_d2, top_idx):
    """Find the ``k`` nearest bank rows of each ``points[point_rows[i]]`` by float64
    sums of squared differences over the whole bank, ties to the lower index.

    Bank row ``exclude[i]`` is skipped (pass -1 to skip none). The sums are the same
    as in ``sq_distances_to_rows``, so both give the same bits for a pair.
    """
    n_points, k = top_d2.shape
    n_bank, n_dims = bank.shape
    for i in prange(n_points):
        p = point_rows[i]
        skip = exclude[i]
        for slot in range(k):
            top_d2[i, slot] = np.inf
            top_idx[i, slot] = n_bank
        worst = np.inf
        for m in range(n_bank):
            if m == skip:
                continue
            total = 0.0
            for dim in range(n_dims):
                diff = np.float64(points[p, dim]) - np.float64(bank[m, dim])
                total += diff * diff
            if total < worst:
                pos = k - 1
                while pos > 0 and top_d2[i, pos - 1] > total:
                    top_d2[i, pos] = top_d2[i, pos - 1]
                    top_idx[i, pos] = top_idx[i, pos - 1]
                    pos -= 1
                top_d2[i, pos] = total
                top_idx[i, pos] = m
                worst = top_d2[i, k - 1]
