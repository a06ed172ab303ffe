"""Neighbourhood search kernels that fill padded neighbour lists, and CSR packing.

Two searches give the same hybrid neighbourhood (the ``k`` nearest points with squared
distance ``<= max_d2``, sorted by (squared distance, index), the query point included):

- ``tree_search`` queries the KD-tree of ``_kdtree`` for every point of the tree.
- ``window_search`` looks only at the valid pixels of a ``(2 * half + 1)`` square
  window around each pixel of an organized cloud, flattened to ``(H * W, 3)``.

Both write rows padded to ``k`` entries (``counts[i]`` of them used) into
``(n, k)`` arrays. ``pack_rows`` then turns those rows into CSR in place, so the search
needs no counting pass and no second buffer.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import jit
from ._kdtree import STACK_SIZE, _box_distance2

BLOCK = 64


@jit
def _before(d2_a, i_a, d2_b, i_b):
    """True when (d2_a, i_a) sorts before (d2_b, i_b)."""
    return d2_a < d2_b or (d2_a == d2_b and i_a < i_b)


@jit
def _swap(d2, idx, a, b):
    t_d2 = d2[a]
    d2[a] = d2[b]
    d2[b] = t_d2
    t_idx = idx[a]
    idx[a] = idx[b]
    idx[b] = t_idx


@jit
def _partition(d2, idx, lo, hi):
    """Partition ``[lo, hi]`` around a median-of-three pivot and return its position."""
    mid = (lo + hi) // 2
    if _before(d2[mid], idx[mid], d2[lo], idx[lo]):
        _swap(d2, idx, mid, lo)
    if _before(d2[hi], idx[hi], d2[lo], idx[lo]):
        _swap(d2, idx, hi, lo)
    if _before(d2[hi], idx[hi], d2[mid], idx[mid]):
        _swap(d2, idx, hi, mid)
    # Now lo <= mid <= hi in (d2, index) order. The pivot (mid) moves to hi - 1, and a
    # Lomuto pass orders lo + 1 .. hi - 2 around it.
    _swap(d2, idx, mid, hi - 1)
    pivot_d2 = d2[hi - 1]
    pivot_idx = idx[hi - 1]
    store = lo + 1
    for i in range(lo + 1, hi - 1):
        if _before(d2[i], idx[i], pivot_d2, pivot_idx):
            _swap(d2, idx, i, store)
            store += 1
    _swap(d2, idx, store, hi - 1)
    return store


@jit
def _insertion_sort(d2, idx, lo, hi):
    """Sort ``[lo, hi]`` (inclusive) by (d2, index)."""
    for i in range(lo + 1, hi + 1):
        key_d2 = d2[i]
        key_idx = idx[i]
        j = i - 1
        while j >= lo and _before(key_d2, key_idx, d2[j], idx[j]):
            d2[j + 1] = d2[j]
            idx[j + 1] = idx[j]
            j -= 1
        d2[j + 1] = key_d2
        idx[j + 1] = key_idx


@jit
def select_pairs(d2, idx, size, nth):
    """Reorder ``[0, size)`` so the ``nth`` smallest pairs by (d2, index) come first.

    The keys are unique because the indices are, so the first ``nth`` entries are
    exactly the ``nth`` smallest, in no particular order.
    """
    lo = 0
    hi = size - 1
    target = nth - 1
    while hi - lo > 32:
        pivot = _partition(d2, idx, lo, hi)
        if pivot == target:
            return
        if pivot < target:
            lo = pivot + 1
        else:
            hi = pivot - 1
    _insertion_sort(d2, idx, lo, hi)


@jit
def sort_pairs(d2, idx, size, scratch_d2, scratch_idx, bucket_start):
    """Sort ``[0, size)`` by (d2, index) in place.

    A bucket sort on ``d2`` spreads the entries over ``size`` equal ranges up to the
    largest value, then an insertion sort orders each bucket and breaks ties by index.
    Points on a surface have squared distances spread about evenly up to the radius,
    so buckets hold about one entry each and the sort takes linear time. The
    ``scratch_*`` arrays hold ``size`` entries and ``bucket_start`` ``size + 1``.
    """
    if size <= 32:
        _insertion_sort(d2, idx, 0, size - 1)
        return
    top = 0.0
    for i in range(size):
        if d2[i] > top:
            top = d2[i]
    # A subnormal top (points closer than about 1e-154) makes size / top overflow to
    # inf, and int() of inf or NaN would give an out-of-range bucket. Such lists are
    # left to the insertion sort.
    scale = size / top if top > 0.0 else 0.0
    if 0.0 < scale < np.inf:
        for b in range(size + 1):
            bucket_start[b] = 0
        for i in range(size):
            bucket_start[min(int(d2[i] * scale), size - 1) + 1] += 1
        for b in range(size):
            bucket_start[b + 1] += bucket_start[b]
        for i in range(size):
            b = min(int(d2[i] * scale), size - 1)
            position = bucket_start[b]
            bucket_start[b] = position + 1
            scratch_d2[position] = d2[i]
            scratch_idx[position] = idx[i]
        for i in range(size):
            d2[i] = scratch_d2[i]
            idx[i] = scratch_idx[i]
    _insertion_sort(d2, idx, 0, size - 1)


@jit
def hybrid_query(tree, query, k, max_d2, workspace, stack):
    """Find the ``k`` nearest points with squared distance ``<= max_d2``.

    Gives the result of ``_kdtree.query_knn_one`` with fewer comparisons: candidates
    are appended to a buffer (capacity at least ``2 * k``), and only when it is full are
    the ``k`` best kept and the bound tightened. The ``count`` results come sorted in
    ``workspace[0][:count]`` (d2) and ``workspace[1][:count]`` (indices); returns
    ``count``. ``workspace`` comes from ``make_workspace``.
    """
    buffer_d2, buffer_idx, scratch_d2, scratch_idx, bucket_start = workspace
    data, order, node_start, node_end, node_left, node_right, node_lo, node_hi = tree
    if k <= 0 or data.shape[0] == 0:
        return 0
    capacity = buffer_d2.shape[0]
    size = 0
    bound = max_d2
    stack[0] = 0
    top = 1
    while top > 0:
        top -= 1
        node = stack[top]
        if _box_distance2(node_lo, node_hi, node, query) > bound:
            continue
        left = node_left[node]
        if left >= 0:
            right = node_right[node]
            # Visit the child on the query's side of the split first.
            if _box_distance2(node_lo, node_hi, left, query) <= _box_distance2(
                node_lo, node_hi, right, query
            ):
                stack[top] = right
                stack[top + 1] = left
            else:
                stack[top] = left
                stack[top + 1] = right
            top += 2
            continue
        for i in range(node_start[node], node_end[node]):
            dx = data[i, 0] - query[0]
            dy = data[i, 1] - query[1]
            dz = data[i, 2] - query[2]
            d2 = dx * dx + dy * dy + dz * dz
            if d2 > bound:
                continue
            if size == capacity:
                select_pairs(buffer_d2, buffer_idx, size, k)
                size = k
                # Points tied with the k-th at the bound may still win on index.
                bound = 0.0
                for j in range(k):
                    if buffer_d2[j] > bound:
                        bound = buffer_d2[j]
                if d2 > bound:
                    continue
            buffer_d2[size] = d2
            buffer_idx[size] = order[i]
            size += 1
    sort_pairs(buffer_d2, buffer_idx, size, scratch_d2, scratch_idx, bucket_start)
    return min(size, k)


@jit
def make_workspace(capacity):
    """Allocate the candidate buffer and sort scratch for ``capacity`` candidates."""
    return (
        np.empty(capacity, np.float64),
        np.empty(capacity, np.intp),
        np.empty(capacity, np.float64),
        np.empty(capacity, np.intp),
        np.empty(capacity + 1, np.intp),
    )


@jit(parallel=True)
def tree_search(tree, points, k, max_d2, out_idx, out_d2, counts):
    """Fill the hybrid neighbour list of each row of ``points`` from ``tree``.

    ``points`` (n, 3) are in the tree's centred coordinates. ``out_idx`` (int32) and
    ``out_d2`` (float64) have shape (n, k), and ``counts`` has shape (n,).
    """
    n = points.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for block in prange(n_blocks):
        stack = np.empty(STACK_SIZE, np.intp)
        workspace = make_workspace(4 * k)
        buffer_d2 = workspace[0]
        buffer_idx = workspace[1]
        query = np.empty(3, np.float64)
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            query[0] = points[i, 0]
            query[1] = points[i, 1]
            query[2] = points[i, 2]
            count = hybrid_query(tree, query, k, max_d2, workspace, stack)
            counts[i] = count
            for j in range(count):
                out_idx[i, j] = buffer_idx[j]
                out_d2[i, j] = buffer_d2[j]


@jit(parallel=True)
def window_search(points, valid, width, half, k, max_d2, out_idx, out_d2, counts):
    """Fill the hybrid neighbour list of each pixel from its image window.

    ``points`` is an organized cloud flattened to (H * W, 3) in centred coordinates,
    with NaN at pixels without a point, and ``valid`` marks the pixels that hold one.
    Neighbour indices are flat pixel indices. A pixel without a point gets an empty
    list.
    """
    n = points.shape[0]
    height = n // width
    side = 2 * half + 1
    n_blocks = (n + BLOCK - 1) // BLOCK
    for block in prange(n_blocks):
        buffer_d2, buffer_idx, scratch_d2, scratch_idx, bucket_start = make_workspace(
            side * side + 1
        )
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            if not valid[i]:
                counts[i] = 0
                continue
            row = i // width
            col = i - row * width
            x = points[i, 0]
            y = points[i, 1]
            z = points[i, 2]
            size = 0
            for r in range(max(0, row - half), min(height, row + half + 1)):
                for c in range(max(0, col - half), min(width, col + half + 1)):
                    j = r * width + c
                    dx = points[j, 0] - x
                    dy = points[j, 1] - y
                    dz = points[j, 2] - z
                    d2 = dx * dx + dy * dy + dz * dz
                    # Store every candidate and advance only past those inside the
                    # radius: no branch to mispredict. A missing pixel has d2 = NaN,
                    # which fails the test.
                    buffer_d2[size] = d2
                    buffer_idx[size] = j
                    size += d2 <= max_d2
            sort_pairs(
                buffer_d2, buffer_idx, size, scratch_d2, scratch_idx, bucket_start
            )
            size = min(size, k)
            counts[i] = size
            for j in range(size):
                out_idx[i, j] = buffer_idx[j]
                out_d2[i, j] = buffer_d2[j]


@jit
def pack_rows(counts, idx, d2):
    """Pack padded (n, k) neighbour rows into CSR and return ``(indptr, nnz)``.

    The packed entries overwrite the front of ``idx.ravel()`` and ``d2.ravel()``:
    row ``i`` moves to ``[indptr[i], indptr[i + 1])``. Copying rows in order is safe
    because no row moves past its own start (``indptr[i] <= i * k``).
    """
    n, k = idx.shape
    flat_idx = idx.reshape(n * k)
    flat_d2 = d2.reshape(n * k)
    indptr = np.empty(n + 1, np.int64)
    indptr[0] = 0
    position = 0
    for i in range(n):
        source = i * k
        if position != source:
            for j in range(counts[i]):
                flat_idx[position + j] = flat_idx[source + j]
                flat_d2[position + j] = flat_d2[source + j]
        position += counts[i]
        indptr[i + 1] = position
    return indptr, position
