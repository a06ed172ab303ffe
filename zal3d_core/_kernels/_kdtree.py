"""KD-tree kernels: build, k-nearest, hybrid (radius capped at k) and radius queries.

A tree is a tuple of arrays so that other kernels (normals, FPFH, synthesis) can take it
as an argument and query it without leaving nopython mode::

    tree = (data, order, node_start, node_end, node_left, node_right, node_lo, node_hi)

``data`` holds the points in tree order as float64, ``order[i]`` is the caller's index of
``data[i]``, and node ``j`` covers ``data[node_start[j]:node_end[j]]`` inside the tight
bounding box ``node_lo[j], node_hi[j]``. Leaves have ``node_left[j] == -1``.

Queries work on squared distances and return the caller's indices. Neighbours are
sorted by (squared distance, index), so equal distances come in index order and results
do not depend on the traversal. A point at exactly the search radius is inside
(``d <= r``), as in ``scipy.spatial.cKDTree.query_ball_point``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import jit

STACK_SIZE = 128
QUERY_BLOCK = 64


@jit
def _select(index, data, dim, start, end, nth):
    """Reorder ``index[start:end]`` so that position ``nth`` holds the element of that
    rank along ``dim``, smaller-or-equal keys before it and larger-or-equal after."""
    lo = start
    hi = end - 1
    while hi > lo:
        mid = (lo + hi) // 2
        # Median of three as pivot, which keeps sorted input (organized scans) linear.
        a = data[index[lo], dim]
        b = data[index[mid], dim]
        c = data[index[hi], dim]
        if (a <= b <= c) or (c <= b <= a):
            pivot = b
        elif (b <= a <= c) or (c <= a <= b):
            pivot = a
        else:
            pivot = c
        i = lo
        j = hi
        while i <= j:
            while data[index[i], dim] < pivot:
                i += 1
            while data[index[j], dim] > pivot:
                j -= 1
            if i <= j:
                tmp = index[i]
                index[i] = index[j]
                index[j] = tmp
                i += 1
                j -= 1
        if nth <= j:
            hi = j
        elif nth >= i:
            lo = i
        else:
            return


@jit
def build_tree(points, leaf_size):
    """Build a KD-tree over finite ``points`` of shape (N, D) with median splits."""
    n, d = points.shape
    capacity = 4 * (n // max(leaf_size, 1) + 1) + 1
    node_start = np.empty(capacity, np.intp)
    node_end = np.empty(capacity, np.intp)
    node_left = np.full(capacity, -1, np.intp)
    node_right = np.full(capacity, -1, np.intp)
    node_lo = np.empty((capacity, d), np.float64)
    node_hi = np.empty((capacity, d), np.float64)
    index = np.arange(n).astype(np.intp)

    node_start[0] = 0
    node_end[0] = n
    n_nodes = 1
    pending = np.empty(capacity, np.intp)
    pending[0] = 0
    n_pending = 1
    while n_pending > 0:
        n_pending -= 1
        node = pending[n_pending]
        start = node_start[node]
        end = node_end[node]

        for k in range(d):
            node_lo[node, k] = np.inf
            node_hi[node, k] = -np.inf
        for i in range(start, end):
            p = index[i]
            for k in range(d):
                value = points[p, k]
                if value < node_lo[node, k]:
                    node_lo[node, k] = value
                if value > node_hi[node, k]:
                    node_hi[node, k] = value
        if n == 0:
            for k in range(d):
                node_lo[node, k] = 0.0
                node_hi[node, k] = 0.0

        split_dim = 0
        spread = -1.0
        for k in range(d):
            extent = node_hi[node, k] - node_lo[node, k]
            if extent > spread:
                spread = extent
                split_dim = k
        # A node of identical points stays a leaf whatever its size.
        if end - start <= leaf_size or spread <= 0.0:
            continue

        mid = start + (end - start) // 2
        _select(index, points, split_dim, start, end, mid)
        left = n_nodes
        right = n_nodes + 1
        n_nodes += 2
        node_start[left] = start
        node_end[left] = mid
        node_start[right] = mid
        node_end[right] = end
        node_left[node] = left
        node_right[node] = right
        pending[n_pending] = right
        pending[n_pending + 1] = left
        n_pending += 2

    data = np.empty((n, d), np.float64)
    for i in range(n):
        for k in range(d):
            data[i, k] = points[index[i], k]
    return (
        data,
        index,
        node_start[:n_nodes].copy(),
        node_end[:n_nodes].copy(),
        node_left[:n_nodes].copy(),
        node_right[:n_nodes].copy(),
        node_lo[:n_nodes].copy(),
        node_hi[:n_nodes].copy(),
    )


@jit
def _box_distance2(node_lo, node_hi, node, query):
    total = 0.0
    for k in range(query.shape[0]):
        value = query[k]
        if value < node_lo[node, k]:
            diff = node_lo[node, k] - value
            total += diff * diff
        elif value > node_hi[node, k]:
            diff = value - node_hi[node, k]
            total += diff * diff
    return total


@jit
def _heap_worse(d2_a, i_a, d2_b, i_b):
    """True when (d2_a, i_a) ranks after (d2_b, i_b)."""
    return d2_a > d2_b or (d2_a == d2_b and i_a > i_b)


@jit
def _heap_push(heap_d2, heap_idx, size, capacity, d2, idx):
    """Insert into a max-heap of the ``capacity`` best pairs; return the new size."""
    if size < capacity:
        pos = size
        size += 1
        while pos > 0:
            parent = (pos - 1) // 2
            if _heap_worse(d2, idx, heap_d2[parent], heap_idx[parent]):
                heap_d2[pos] = heap_d2[parent]
                heap_idx[pos] = heap_idx[parent]
                pos = parent
            else:
                break
        heap_d2[pos] = d2
        heap_idx[pos] = idx
        return size
    if not _heap_worse(heap_d2[0], heap_idx[0], d2, idx):
        return size
    _heap_sift_down(heap_d2, heap_idx, size, d2, idx)
    return size


@jit
def _heap_sift_down(heap_d2, heap_idx, size, d2, idx):
    """Replace the root of a max-heap of ``size`` items with (d2, idx)."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _heap_worse(
            heap_d2[child + 1], heap_idx[child + 1], heap_d2[child], heap_idx[child]
        ):
            child += 1
        if _heap_worse(heap_d2[child], heap_idx[child], d2, idx):
            heap_d2[pos] = heap_d2[child]
            heap_idx[pos] = heap_idx[child]
            pos = child
        else:
            break
    heap_d2[pos] = d2
    heap_idx[pos] = idx


@jit
def _heap_sort(heap_d2, heap_idx, size):
    """Sort a max-heap in place into ascending (d2, idx) order."""
    for end in range(size - 1, 0, -1):
        d2 = heap_d2[end]
        idx = heap_idx[end]
        heap_d2[end] = heap_d2[0]
        heap_idx[end] = heap_idx[0]
        _heap_sift_down(heap_d2, heap_idx, end, d2, idx)


@jit
def query_knn_one(tree, query, k, max_d2, out_d2, out_idx, stack):
    """Find the ``k`` nearest points with squared distance ``<= max_d2``.

    Writes the squared distances and the caller's indices, ascending, into
    ``out_d2[:count]`` and ``out_idx[:count]`` and returns ``count``. ``max_d2 = inf``
    gives a plain k-nearest query, a finite one the hybrid (radius capped at k) query.
    ``stack`` is an int scratch array of at least ``STACK_SIZE`` entries.
    """
    data, order, node_start, node_end, node_left, node_right, node_lo, node_hi = tree
    if k <= 0 or data.shape[0] == 0:
        return 0
    dim = data.shape[1]
    size = 0
    stack[0] = 0
    top = 1
    while top > 0:
        top -= 1
        node = stack[top]
        bound = out_d2[0] if size == k else max_d2
        if _box_distance2(node_lo, node_hi, node, query) > bound:
            continue
        left = node_left[node]
        if left < 0:
            for i in range(node_start[node], node_end[node]):
                d2 = 0.0
                for j in range(dim):
                    diff = data[i, j] - query[j]
                    d2 += diff * diff
                if d2 <= max_d2:
                    size = _heap_push(out_d2, out_idx, size, k, d2, order[i])
            continue
        right = node_right[node]
        # Descend into the child on the query's side of the split first.
        left_d2 = _box_distance2(node_lo, node_hi, left, query)
        right_d2 = _box_distance2(node_lo, node_hi, right, query)
        if left_d2 <= right_d2:
            stack[top] = right
            stack[top + 1] = left
        else:
            stack[top] = left
            stack[top + 1] = right
        top += 2
    _heap_sort(out_d2, out_idx, size)
    return size


@jit
def count_radius_one(tree, query, max_d2, stack):
    """Count the points with squared distance ``<= max_d2`` from ``query``."""
    data, order, node_start, node_end, node_left, node_right, node_lo, node_hi = tree
    if data.shape[0] == 0:
        return 0
    dim = data.shape[1]
    count = 0
    stack[0] = 0
    top = 1
    while top > 0:
        top -= 1
        node = stack[top]
        if _box_distance2(node_lo, node_hi, node, query) > max_d2:
            continue
        left = node_left[node]
        if left < 0:
            for i in range(node_start[node], node_end[node]):
                d2 = 0.0
                for j in range(dim):
                    diff = data[i, j] - query[j]
                    d2 += diff * diff
                if d2 <= max_d2:
                    count += 1
            continue
        stack[top] = node_right[node]
        stack[top + 1] = left
        top += 2
    return count


@jit
def query_knn_batch(tree, queries, k, max_d2):
    """Batch k-nearest (or hybrid) query, parallel over blocks of queries.

    Returns ``(d2, idx, counts)``: arrays of shape (M, k) padded with ``inf`` and
    ``N`` past ``counts[i]``.
    """
    return _query_knn_batch(tree, queries, k, max_d2)


@jit(parallel=True)
def _query_knn_batch(tree, queries, k, max_d2):
    m = queries.shape[0]
    n = tree[0].shape[0]
    out_d2 = np.full((m, k), np.inf, np.float64)
    out_idx = np.full((m, k), n, np.intp)
    counts = np.zeros(m, np.intp)
    n_blocks = (m + QUERY_BLOCK - 1) // QUERY_BLOCK
    for block in prange(n_blocks):
        stack = np.empty(STACK_SIZE, np.intp)
        heap_d2 = np.empty(k, np.float64)
        heap_idx = np.empty(k, np.intp)
        query = np.empty(queries.shape[1], np.float64)
        for qi in range(block * QUERY_BLOCK, min(m, (block + 1) * QUERY_BLOCK)):
            for j in range(queries.shape[1]):
                query[j] = queries[qi, j]
            count = query_knn_one(tree, query, k, max_d2, heap_d2, heap_idx, stack)
            counts[qi] = count
            for j in range(count):
                out_d2[qi, j] = heap_d2[j]
                out_idx[qi, j] = heap_idx[j]
    return out_d2, out_idx, counts


@jit(parallel=True)
def count_radius_batch(tree, queries, max_d2):
    """Count the neighbours within ``sqrt(max_d2)`` of each query, in parallel."""
    m = queries.shape[0]
    counts = np.zeros(m, np.intp)
    n_blocks = (m + QUERY_BLOCK - 1) // QUERY_BLOCK
    for block in prange(n_blocks):
        stack = np.empty(STACK_SIZE, np.intp)
        query = np.empty(queries.shape[1], np.float64)
        for qi in range(block * QUERY_BLOCK, min(m, (block + 1) * QUERY_BLOCK)):
            for j in range(queries.shape[1]):
                query[j] = queries[qi, j]
            counts[qi] = count_radius_one(tree, query, max_d2, stack)
    return counts


@jit(parallel=True)
def query_radius_batch(tree, queries, max_d2, indptr):
    """All neighbours within ``sqrt(max_d2)``, sorted, as CSR rows given by ``indptr``.

    ``indptr`` comes from the cumulative sum of ``count_radius_batch``.
    Returns ``(d2, idx)`` of length ``indptr[-1]``.
    """
    m = queries.shape[0]
    total = indptr[m]
    out_d2 = np.empty(total, np.float64)
    out_idx = np.empty(total, np.intp)
    n_blocks = (m + QUERY_BLOCK - 1) // QUERY_BLOCK
    for block in prange(n_blocks):
        stack = np.empty(STACK_SIZE, np.intp)
        query = np.empty(queries.shape[1], np.float64)
        for qi in range(block * QUERY_BLOCK, min(m, (block + 1) * QUERY_BLOCK)):
            for j in range(queries.shape[1]):
                query[j] = queries[qi, j]
            start = indptr[qi]
            k = indptr[qi + 1] - start
            if k == 0:
                continue
            query_knn_one(
                tree, query, k, max_d2, out_d2[start : start + k],
                out_idx[start : start + k], stack,
            )
    return out_d2, out_idx
