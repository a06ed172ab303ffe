"""k-center greedy kernel over features stored in row panels.

Features are stored as panels of shape ``(n_blocks, n_dims, ROW_BLOCK)``. Panel ``b``
contains rows ``b * ROW_BLOCK`` to ``(b + 1) * ROW_BLOCK - 1`` transposed, padded with
zeros after the last row. The inner loop runs over the rows of one panel, and each
row keeps its own accumulator, so LLVM vectorizes the loop without reordering any
sum. Every squared distance is summed over the dimensions in index order, in the
dtype of the panels.

The number of blocks depends only on the number of rows, and their maxima are merged
in block order, so the picks are bit-identical for any thread count.
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


@jit(fastmath=_EXACT_MAX)
def _max_value(values):
    best = -np.inf
    for i in range(values.shape[0]):
        best = max(best, values[i])
    return best


@jit(parallel=True, fastmath=_CONTRACT_ONLY)
def greedy_steps(panels, n_rows, min_d2, selected, first, stop, scratch, block_max):
    """Run k-center greedy steps ``first .. stop - 1`` and return the covering radius.

    Step ``s`` lowers ``min_d2`` (squared distance of each row to the selected set)
    with the row ``selected[s - 1]`` and marks that row with -1, so it is never picked
    again. When ``s < len(selected)``, the step then stores in ``selected[s]`` the row
    with the largest ``min_d2``, the lowest index on ties. Pass
    ``stop = len(selected) + 1`` to apply the last pick as well.

    Returns the largest ``min_d2`` after the last step, clamped at 0: the squared
    covering radius of the selected rows once the last pick has been applied.
    """
    n_blocks, n_dims, _ = panels.shape
    n_select = selected.shape[0]
    centre = np.empty(n_dims, panels.dtype)
    best = 0.0
    for step in range(first, stop):
        pick = selected[step - 1]
        pick_block = pick // ROW_BLOCK
        pick_lane = pick - pick_block * ROW_BLOCK
        for k in range(n_dims):
            centre[k] = panels[pick_block, k, pick_lane]
        # Every distance is >= 0, so the minimum below keeps this mark.
        min_d2[pick] = -1.0

        for block in prange(n_blocks):
            acc = scratch[block]
            for i in range(ROW_BLOCK):
                acc[i] = 0.0
            for k in range(n_dims):
                c = centre[k]
                row = panels[block, k]
                for i in range(ROW_BLOCK):
                    diff = row[i] - c
                    acc[i] += diff * diff

            start = block * ROW_BLOCK
            rows = min_d2[start : min(n_rows, start + ROW_BLOCK)]
            for i in range(rows.shape[0]):
                rows[i] = min(rows[i], acc[i])
            block_max[block] = _max_value(rows)

        # The first block that reaches the maximum contains its lowest row.
        best = _max_value(block_max)
        if step < n_select:
            winner = 0
            while block_max[winner] != best:
                winner += 1
            row_index = winner * ROW_BLOCK
            while min_d2[row_index] != best:
                row_index += 1
            selected[step] = row_index
    return max(best, 0.0)
