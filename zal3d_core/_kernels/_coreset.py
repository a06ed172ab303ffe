"""k-center greedy kernel over features stored in row panels, with lazy block updates.

Features are stored as panels of shape ``(n_blocks, n_dims, ROW_BLOCK)``. Panel ``b``
contains rows ``b * ROW_BLOCK`` to ``(b + 1) * ROW_BLOCK - 1`` transposed, padded with
zeros after the last row. The inner loops run over the rows of one panel, and each
row keeps its own accumulator, so LLVM vectorizes them without reordering any sum.
Every squared distance is summed over the dimensions in index order, in the dtype of
the panels, whichever helper computes it.

Each block remembers how many of the selected rows (centres) it has applied to its
rows' distances, and the maximum distance of its rows at that time. Distances only
shrink as centres are added, so that maximum bounds the block's current maximum from
above. A step updates blocks in order of their bound, largest first, and stops as
soon as an updated block reaches or beats every remaining bound. Blocks left behind
apply all their pending centres in one later pass, three centres per read of the
panel, which reads each panel far fewer times than one pass per centre.

The picks do not depend on which blocks a step updates: an updated block holds exact
minima, min is exact in any order, and the winner is always an updated block. The
thread count only changes how many blocks a round updates and how their lanes are
split between threads.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import jit

ROW_BLOCK = 1024

# Fused multiply-add changes the rounding of each term but not the order of the sum,
# so results stay independent of the thread count. Reassociation stays off.
_CONTRACT_ONLY = {"contract"}

# The maximum of finite values is exact in any order, so letting LLVM reorder (and
# vectorize) this reduction cannot change its result. Infinity is kept.
_EXACT_MAX = {"reassoc", "nsz", "nnan"}

# Dimensions added per load and store of an accumulator. The terms are still added
# one at a time in index order, so unrolling changes no sum.
_UNROLL = 4


@jit(fastmath=_EXACT_MAX)
def _max_value(values):
    best = -np.inf
    for i in range(values.shape[0]):
        best = max(best, values[i])
    return best


# Input columns per pass of ``project_panels`` over a block's projected rows. A pass
# reads and writes each projected row once per 16 products. On the benchmark bank,
# 16 columns per pass took 0.056 s and 8 took 0.061 s.
_PROJECT_COLUMNS = 16


@jit(parallel=True, fastmath=_CONTRACT_ONLY)
def project_panels(features, matrix, panels, n_rows, limit):
    """Store ``features @ matrix`` in ``panels`` and return the count of bad blocks.

    Block ``b`` of 1024 rows goes to ``panels[b]``, transposed, whose padding lanes
    must already be 0. Each output is summed over the input columns in index order, in
    the dtype of ``matrix``, and then rounded to the dtype of ``panels``. Blocks run in
    parallel, so the result is bit-identical for any thread count.

    A block is bad when one of its values is NaN, infinite or larger than ``limit``
    in magnitude; its panel then holds meaningless values. The caller reports which.
    """
    n_blocks = panels.shape[0]
    n_cols = features.shape[1]
    n_out = matrix.shape[1]
    bad = np.zeros(n_blocks, np.uint8)
    for block in prange(n_blocks):
        first = block * ROW_BLOCK
        n = min(ROW_BLOCK, n_rows - first)
        sums = np.zeros((n, n_out), matrix.dtype)
        ok = True
        k = 0
        while k + _PROJECT_COLUMNS <= n_cols:
            w0 = matrix[k]
            w1 = matrix[k + 1]
            w2 = matrix[k + 2]
            w3 = matrix[k + 3]
            w4 = matrix[k + 4]
            w5 = matrix[k + 5]
            w6 = matrix[k + 6]
            w7 = matrix[k + 7]
            w8 = matrix[k + 8]
            w9 = matrix[k + 9]
            w10 = matrix[k + 10]
            w11 = matrix[k + 11]
            w12 = matrix[k + 12]
            w13 = matrix[k + 13]
            w14 = matrix[k + 14]
            w15 = matrix[k + 15]
            for r in range(n):
                row = features[first + r]
                for c in range(k, k + _PROJECT_COLUMNS):
                    # Written so that NaN fails the test too.
                    if not abs(row[c]) <= limit:
                        ok = False
                x0 = row[k]
                x1 = row[k + 1]
                x2 = row[k + 2]
                x3 = row[k + 3]
                x4 = row[k + 4]
                x5 = row[k + 5]
                x6 = row[k + 6]
                x7 = row[k + 7]
                x8 = row[k + 8]
                x9 = row[k + 9]
                x10 = row[k + 10]
                x11 = row[k + 11]
                x12 = row[k + 12]
                x13 = row[k + 13]
                x14 = row[k + 14]
                x15 = row[k + 15]
                out = sums[r]
                for j in range(n_out):
                    total = out[j]
                    total += x0 * w0[j]
                    total += x1 * w1[j]
                    total += x2 * w2[j]
                    total += x3 * w3[j]
                    total += x4 * w4[j]
                    total += x5 * w5[j]
                    total += x6 * w6[j]
                    total += x7 * w7[j]
                    total += x8 * w8[j]
                    total += x9 * w9[j]
                    total += x10 * w10[j]
                    total += x11 * w11[j]
                    total += x12 * w12[j]
                    total += x13 * w13[j]
                    total += x14 * w14[j]
                    total += x15 * w15[j]
                    out[j] = total
            k += _PROJECT_COLUMNS
        while k < n_cols:
            w0 = matrix[k]
            for r in range(n):
                x0 = features[first + r, k]
                if not abs(x0) <= limit:
                    ok = False
                out = sums[r]
                for j in range(n_out):
                    out[j] += x0 * w0[j]
            k += 1
        if not ok:
            bad[block] = 1
        panel = panels[block]
        for j in range(n_out):
            for r in range(n):
                panel[j, r] = sums[r, j]
    total_bad = 0
    for block in range(n_blocks):
        total_bad += bad[block]
    return total_bad


@jit(fastmath=_CONTRACT_ONLY)
def _squared_distances_one(panel, lo, hi, centre, acc):
    """Store in ``acc`` the squared distances of panel lanes ``lo .. hi - 1`` to
    ``centre``."""
    n_dims = panel.shape[0]
    n_lanes = hi - lo
    for i in range(n_lanes):
        acc[i] = 0.0
    k = 0
    while k + _UNROLL <= n_dims:
        c0 = centre[k]
        c1 = centre[k + 1]
        c2 = centre[k + 2]
        c3 = centre[k + 3]
        r0 = panel[k, lo:hi]
        r1 = panel[k + 1, lo:hi]
        r2 = panel[k + 2, lo:hi]
        r3 = panel[k + 3, lo:hi]
        for i in range(n_lanes):
            total = acc[i]
            diff = r0[i] - c0
            total += diff * diff
            diff = r1[i] - c1
            total += diff * diff
            diff = r2[i] - c2
            total += diff * diff
            diff = r3[i] - c3
            total += diff * diff
            acc[i] = total
        k += _UNROLL
    while k < n_dims:
        c0 = centre[k]
        r0 = panel[k, lo:hi]
        for i in range(n_lanes):
            diff = r0[i] - c0
            acc[i] += diff * diff
        k += 1


@jit(fastmath=_CONTRACT_ONLY)
def _squared_distances_two(panel, lo, hi, centres, acc):
    """Store in ``acc[0]`` and ``acc[1]`` the squared distances of panel lanes
    ``lo .. hi - 1`` to the two rows of ``centres``.

    Each panel value is loaded once for both centres, and each sum is formed exactly
    as in ``_squared_distances_one``.
    """
    n_dims = panel.shape[0]
    n_lanes = hi - lo
    acc_a = acc[0]
    acc_b = acc[1]
    centre_a = centres[0]
    centre_b = centres[1]
    for i in range(n_lanes):
        acc_a[i] = 0.0
        acc_b[i] = 0.0
    k = 0
    while k + _UNROLL <= n_dims:
        a0 = centre_a[k]
        a1 = centre_a[k + 1]
        a2 = centre_a[k + 2]
        a3 = centre_a[k + 3]
        b0 = centre_b[k]
        b1 = centre_b[k + 1]
        b2 = centre_b[k + 2]
        b3 = centre_b[k + 3]
        r0 = panel[k, lo:hi]
        r1 = panel[k + 1, lo:hi]
        r2 = panel[k + 2, lo:hi]
        r3 = panel[k + 3, lo:hi]
        for i in range(n_lanes):
            x0 = r0[i]
            x1 = r1[i]
            x2 = r2[i]
            x3 = r3[i]
            total_a = acc_a[i]
            total_b = acc_b[i]
            diff = x0 - a0
            total_a += diff * diff
            diff = x0 - b0
            total_b += diff * diff
            diff = x1 - a1
            total_a += diff * diff
            diff = x1 - b1
            total_b += diff * diff
            diff = x2 - a2
            total_a += diff * diff
            diff = x2 - b2
            total_b += diff * diff
            diff = x3 - a3
            total_a += diff * diff
            diff = x3 - b3
            total_b += diff * diff
            acc_a[i] = total_a
            acc_b[i] = total_b
        k += _UNROLL
    while k < n_dims:
        a0 = centre_a[k]
        b0 = centre_b[k]
        r0 = panel[k, lo:hi]
        for i in range(n_lanes):
            diff = r0[i] - a0
            acc_a[i] += diff * diff
            diff = r0[i] - b0
            acc_b[i] += diff * diff
        k += 1


@jit(fastmath=_CONTRACT_ONLY)
def _squared_distances_three(panel, lo, hi, centres, acc):
    """Store in ``acc[0]``, ``acc[1]`` and ``acc[2]`` the squared distances of panel
    lanes ``lo .. hi - 1`` to the three rows of ``centres``.

    Each panel value is loaded once for the three centres, and each sum is formed
    exactly as in ``_squared_distances_one``.
    """
    n_dims = panel.shape[0]
    n_lanes = hi - lo
    acc_a = acc[0]
    acc_b = acc[1]
    acc_c = acc[2]
    centre_a = centres[0]
    centre_b = centres[1]
    centre_c = centres[2]
    for i in range(n_lanes):
        acc_a[i] = 0.0
        acc_b[i] = 0.0
        acc_c[i] = 0.0
    k = 0
    while k + _UNROLL <= n_dims:
        a0 = centre_a[k]
        a1 = centre_a[k + 1]
        a2 = centre_a[k + 2]
        a3 = centre_a[k + 3]
        b0 = centre_b[k]
        b1 = centre_b[k + 1]
        b2 = centre_b[k + 2]
        b3 = centre_b[k + 3]
        c0 = centre_c[k]
        c1 = centre_c[k + 1]
        c2 = centre_c[k + 2]
        c3 = centre_c[k + 3]
        r0 = panel[k, lo:hi]
        r1 = panel[k + 1, lo:hi]
        r2 = panel[k + 2, lo:hi]
        r3 = panel[k + 3, lo:hi]
        for i in range(n_lanes):
            x0 = r0[i]
            x1 = r1[i]
            x2 = r2[i]
            x3 = r3[i]
            total_a = acc_a[i]
            total_b = acc_b[i]
            total_c = acc_c[i]
            diff = x0 - a0
            total_a += diff * diff
            diff = x0 - b0
            total_b += diff * diff
            diff = x0 - c0
            total_c += diff * diff
            diff = x1 - a1
            total_a += diff * diff
            diff = x1 - b1
            total_b += diff * diff
            diff = x1 - c1
            total_c += diff * diff
            diff = x2 - a2
            total_a += diff * diff
            diff = x2 - b2
            total_b += diff * diff
            diff = x2 - c2
            total_c += diff * diff
            diff = x3 - a3
            total_a += diff * diff
            diff = x3 - b3
            total_b += diff * diff
            diff = x3 - c3
            total_c += diff * diff
            acc_a[i] = total_a
            acc_b[i] = total_b
            acc_c[i] = total_c
        k += _UNROLL
    while k < n_dims:
        a0 = centre_a[k]
        b0 = centre_b[k]
        c0 = centre_c[k]
        r0 = panel[k, lo:hi]
        for i in range(n_lanes):
            diff = r0[i] - a0
            acc_a[i] += diff * diff
            diff = r0[i] - b0
            acc_b[i] += diff * diff
            diff = r0[i] - c0
            acc_c[i] += diff * diff
        k += 1


@jit(fastmath=_CONTRACT_ONLY)
def _update_lanes(panels, block, lo, hi, n_rows, min_d2, centres, first, stop, acc):
    """Apply centres ``first .. stop - 1`` to lanes ``lo .. hi - 1`` of one block.

    Returns the largest distance of those lanes' rows, or -inf when the lanes lie
    past the last row. ``acc`` is scratch of shape ``(3, >= hi - lo)`` that no other
    thread uses. Centres go three per read of the panel, and the last one or two
    alone or as a pair.
    """
    start = block * ROW_BLOCK
    hi = min(hi, n_rows - start)
    if hi <= lo:
        return -np.inf
    rows = min_d2[start + lo : start + hi]
    panel = panels[block]
    centre = first
    while centre + 3 <= stop:
        _squared_distances_three(panel, lo, hi, centres[centre : centre + 3], acc)
        for i in range(rows.shape[0]):
            rows[i] = min(rows[i], min(acc[0, i], min(acc[1, i], acc[2, i])))
        centre += 3
    if centre + 2 == stop:
        _squared_distances_two(panel, lo, hi, centres[centre : centre + 2], acc)
        for i in range(rows.shape[0]):
            rows[i] = min(rows[i], min(acc[0, i], acc[1, i]))
    elif centre + 1 == stop:
        _squared_distances_one(panel, lo, hi, centres[centre], acc[0])
        for i in range(rows.shape[0]):
            rows[i] = min(rows[i], acc[0, i])
    return _max_value(rows)


@jit
def _leading_block(block_max, applied, step):
    """Return the up-to-date block with the largest maximum, the lowest on ties, or -1."""
    winner = -1
    for block in range(block_max.shape[0]):
        if applied[block] != step:
            continue
        if winner < 0 or block_max[block] > block_max[winner]:
            winner = block
    return winner


@jit
def _choose_blocks(block_max, applied, step, chosen):
    """Store in ``chosen`` the stale blocks that could still hold the maximum.

    A stale block qualifies when its bound beats the leading up-to-date block, or
    ties it at a lower block index. At most ``len(chosen)`` of them are kept, largest
    bound first and the lowest index on ties. Returns how many were stored.
    """
    leader = _leading_block(block_max, applied, step)
    n_chosen = 0
    for block in range(block_max.shape[0]):
        if applied[block] == step:
            continue
        bound = block_max[block]
        if leader >= 0:
            if bound < block_max[leader]:
                continue
            if bound == block_max[leader] and block > leader:
                continue
        # Insert by bound. Blocks arrive in index order, so ties stay in that order.
        slot = n_chosen
        while slot > 0 and block_max[chosen[slot - 1]] < bound:
            slot -= 1
        if slot >= chosen.shape[0]:
            continue
        last = min(n_chosen, chosen.shape[0] - 1)
        for moved in range(last, slot, -1):
            chosen[moved] = chosen[moved - 1]
        chosen[slot] = block
        n_chosen = min(n_chosen + 1, chosen.shape[0])
    return n_chosen


@jit(parallel=True, fastmath=_CONTRACT_ONLY)
def greedy_steps(
    panels,
    n_rows,
    min_d2,
    selected,
    centres,
    applied,
    block_max,
    first,
    stop,
    n_parts,
    chosen,
    part_max,
    scratch,
):
    """Run k-center greedy steps ``first .. stop - 1`` and return the covering radius.

    Before step ``s``, ``selected[:s]`` contains the picks so far and ``centres[:s - 1]``
    their coordinates. Step ``s`` copies the coordinates of ``selected[s - 1]`` into
    ``centres[s - 1]`` and marks that row with -1 in ``min_d2``, so it is never picked
    again. When ``s < len(selected)``, the step then stores in ``selected[s]`` the row
    with the largest squared distance to the picks, the lowest index on ties. Pass
    ``stop = len(selected) + 1`` to apply the last pick as well.

    ``min_d2`` contains, for each row of block ``b``, the squared distance to the
    nearest of the first ``applied[b]`` centres, and ``block_max[b]`` the maximum of
    those rows. Start with ``min_d2`` and ``block_max`` at +inf and ``applied`` at 0.

    Each round updates at most ``len(chosen)`` blocks. With ``n_parts > 1`` the round
    runs in parallel, and each block is split into ``n_parts`` lane ranges, so that
    thread ``t`` of ``n_parts`` threads gets range ``t`` of every block and the same
    share of the work whatever the blocks' backlogs. ``part_max`` has room for
    ``n_parts * len(chosen)`` values and ``scratch`` has shape
    ``(n_parts * len(chosen), 3, lanes)`` with ``lanes >= ceil(ROW_BLOCK / n_parts)``.

    Returns the largest squared distance after the last step, clamped at 0: the
    squared covering radius of the selected rows once the last pick has been applied.
    """
    n_dims = panels.shape[1]
    n_select = selected.shape[0]
    best = 0.0
    for step in range(first, stop):
        pick = selected[step - 1]
        pick_block = pick // ROW_BLOCK
        pick_lane = pick - pick_block * ROW_BLOCK
        for k in range(n_dims):
            centres[step - 1, k] = panels[pick_block, k, pick_lane]
        # Every distance is >= 0, so later minima keep this mark. The bound of the
        # pick's block stays valid, because the mark only lowers a value.
        min_d2[pick] = -1.0

        while True:
            n_chosen = _choose_blocks(block_max, applied, step, chosen)
            if n_chosen == 0:
                break
            if n_parts == 1:
                for slot in range(n_chosen):
                    block = chosen[slot]
                    part_max[slot] = _update_lanes(
                        panels,
                        block,
                        0,
                        ROW_BLOCK,
                        n_rows,
                        min_d2,
                        centres,
                        applied[block],
                        step,
                        scratch[0],
                    )
            else:
                # Items run part by part, so prange's equal contiguous shares give
                # each thread one lane range of every chosen block.
                for item in prange(n_parts * n_chosen):
                    part = item // n_chosen
                    block = chosen[item - part * n_chosen]
                    part_max[item] = _update_lanes(
                        panels,
                        block,
                        part * ROW_BLOCK // n_parts,
                        (part + 1) * ROW_BLOCK // n_parts,
                        n_rows,
                        min_d2,
                        centres,
                        applied[block],
                        step,
                        scratch[item],
                    )
            for slot in range(n_chosen):
                largest = part_max[slot]
                for part in range(1, n_parts):
                    largest = max(largest, part_max[part * n_chosen + slot])
                block = chosen[slot]
                block_max[block] = largest
                applied[block] = step

        winner = _leading_block(block_max, applied, step)
        best = block_max[winner]
        if step < n_select:
            row_index = winner * ROW_BLOCK
            while min_d2[row_index] != best:
                row_index += 1
            selected[step] = row_index
    return max(best, 0.0)
