"""Kernels of pseudo-anomaly synthesis: neighbourhood masks, z-buffer splatting, gap filling.

Every kernel takes arrays that the wrappers in ``zal3d_core.synthesis`` have already
checked. Coordinates are float64 and centred on the tree's centre, as the KD-tree
kernels expect. Depth buffers hold ``inf`` where no point was drawn.
"""

from __future__ import annotations

import numpy as np

from .._numba import jit
from . import _kdtree


@jit
def removal_mask(tree, centred_points, anchors, k, n_remove, centre_ranks):
    """Mark the points removed around each anchor, as a bool mask over the tree's points.

    For anchor ``a`` the kernel finds its ``k`` nearest points (ties by index). When
    ``n_remove >= k`` all of them are marked. Otherwise the neighbour of rank
    ``centre_ranks[a]`` becomes the hole's centre, and the ``n_remove`` neighbours
    nearest to that centre are marked (ties by index), so the hole stays compact.

    ``centred_points`` contains the tree's points in the caller's order, minus the
    tree's centre, and ``anchors`` contains centred query coordinates of shape (A, 3).
    """
    n_points = centred_points.shape[0]
    mask = np.zeros(n_points, np.bool_)
    stack = np.empty(_kdtree.STACK_SIZE, np.intp)
    heap_d2 = np.empty(k, np.float64)
    heap_idx = np.empty(k, np.intp)
    query = np.empty(3, np.float64)
    for a in range(anchors.shape[0]):
        for j in range(3):
            query[j] = anchors[a, j]
        count = _kdtree.query_knn_one(tree, query, k, np.inf, heap_d2, heap_idx, stack)
        if n_remove >= count:
            for i in range(count):
                mask[heap_idx[i]] = True
            continue
        centre = heap_idx[centre_ranks[a]]
        # Sorting the neighbours by index first makes the stable sort by distance
        # below break ties by index.
        neighbours = np.sort(heap_idx[:count])
        d2 = np.empty(count, np.float64)
        for i in range(count):
            total = 0.0
            for j in range(3):
                diff = centred_points[neighbours[i], j] - centred_points[centre, j]
                total += diff * diff
            d2[i] = total
        order = np.argsort(d2, kind="mergesort")
        for i in range(n_remove):
            mask[neighbours[order[i]]] = True
    return mask


@jit
def splat_depth(u, v, depth, height, width):
    """Draw points into a (height, width) depth buffer, keeping the nearest per pixel.

    Point ``p`` lands on pixel ``(round(v[p]), round(u[p]))``, with halves rounded up.
    Points with a non-finite coordinate or depth, and points outside the image, are
    skipped. Pixels that no point reaches hold ``inf``.
    """
    buffer = np.full((height, width), np.inf, np.float64)
    for p in range(u.shape[0]):
        if not (np.isfinite(u[p]) and np.isfinite(v[p]) and np.isfinite(depth[p])):
            continue
        # Test the range in floating point: int() of a value beyond int64 is undefined.
        col_f = np.floor(u[p] + 0.5)
        row_f = np.floor(v[p] + 0.5)
        if row_f < 0.0 or row_f >= height or col_f < 0.0 or col_f >= width:
            continue
        row = int(row_f)
        col = int(col_f)
        buffer[row, col] = min(buffer[row, col], depth[p])
    return buffer


@jit
def fill_depth_gaps(buffer, radius, min_quadrants):
    """Fill the empty pixels that lie between drawn pixels of a depth buffer.

    An empty pixel is filled when drawn pixels within ``radius`` (Chebyshev distance)
    sit in at least ``min_quadrants`` of the four quadrants around it. The quadrants
    are half-open, so they split the window without overlap. With ``min_quadrants=3`` a
    pixel just outside a straight edge of the drawn region has drawn pixels in only two
    quadrants and stays empty, so filling closes holes without growing the outline. The filled depth
    is the inverse-squared-distance weighted mean of the drawn depths in the window.
    """
    height, width = buffer.shape
    out = buffer.copy()
    row_lo = height
    row_hi = -1
    col_lo = width
    col_hi = -1
    for i in range(height):
        for j in range(width):
            if np.isfinite(buffer[i, j]):
                row_lo = min(row_lo, i)
                row_hi = max(row_hi, i)
                col_lo = min(col_lo, j)
                col_hi = max(col_hi, j)
    if row_hi < 0:
        return out
    for i in range(row_lo, row_hi + 1):
        for j in range(col_lo, col_hi + 1):
            if np.isfinite(buffer[i, j]):
                continue
            seen0 = False
            seen1 = False
            seen2 = False
            seen3 = False
            weight_sum = 0.0
            depth_sum = 0.0
            for di in range(-radius, radius + 1):
                ii = i + di
                if ii < 0 or ii >= height:
                    continue
                for dj in range(-radius, radius + 1):
                    jj = j + dj
                    if jj < 0 or jj >= width or (di == 0 and dj == 0):
                        continue
                    value = buffer[ii, jj]
                    if not np.isfinite(value):
                        continue
                    if di <= 0 and dj > 0:
                        seen0 = True
                    elif di < 0 and dj <= 0:
                        seen1 = True
                    elif di >= 0 and dj < 0:
                        seen2 = True
                    else:
                        seen3 = True
                    weight = 1.0 / (di * di + dj * dj)
                    weight_sum += weight
                    depth_sum += weight * value
            quadrants = int(seen0) + int(seen1) + int(seen2) + int(seen3)
            if quadrants >= min_quadrants:
                out[i, j] = depth_sum / weight_sum
    return out


@jit
def select_spread(order, height, width, n_select, min_distance):
    """Select pixels in ``order``, each at least ``min_distance`` from those selected.

    ``order`` lists flat pixel indices, best first. A selected pixel blocks every pixel
    at Euclidean distance ``< min_distance`` from it. Returns the selected flat
    indices, at most ``n_select`` of them, in the order of selection.
    """
    blocked = np.zeros((height, width), np.bool_)
    selected = np.empty(n_select, np.intp)
    count = 0
    reach = int(np.ceil(min_distance))
    limit = min_distance * min_distance
    for position in range(order.shape[0]):
        if count == n_select:
            break
        flat = order[position]
        row = flat // width
        col = flat % width
        if blocked[row, col]:
            continue
        selected[count] = flat
        count += 1
        for di in range(-reach, reach + 1):
            ii = row + di
            if ii < 0 or ii >= height:
                continue
            for dj in range(-reach, reach + 1):
                jj = col + dj
                if jj < 0 or jj >= width:
                    continue
                if di * di + dj * dj < limit:
                    blocked[ii, jj] = True
    return selected[:count]
