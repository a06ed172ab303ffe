"""Slow, obvious versions of the metrics, written independently of zal3d_core.metrics.

AUROC counts every (anomalous, normal) pair. The PRO curve loops over the distinct
scores and measures each defect region's overlap with its own boolean mask, and AU-PRO
integrates the clipped curve with ``np.trapezoid``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def reference_auroc(labels, scores) -> float:
    """Return the share of (anomalous, normal) pairs ranked correctly, ties as 1/2."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positive = scores[labels]
    negative = scores[~labels]
    wins = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return (wins + 0.5 * ties) / (positive.size * negative.size)


def _regions(masks, maps):
    """List (image index, region mask restricted to scored pixels), 8-connected."""
    regions = []
    for i, (mask, score_map) in enumerate(zip(masks, maps)):
        labels, count = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            region = (labels == r) & ~np.isnan(score_map)
            if region.any():
                regions.append((i, region))
    return regions


def reference_pro_curve(masks, maps):
    """Return (fpr, pro) with one point per distinct score, starting at (0, 0)."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(m, dtype=bool) for m in masks]
    regions = _regions(masks, maps)
    normal_scores = np.concatenate(
        [m[~mask & ~np.isnan(m)] for mask, m in zip(masks, maps)]
    )
    all_scores = np.concatenate([m[~np.isnan(m)] for m in maps])
    fpr = [0.0]
    pro = [0.0]
    for threshold in np.unique(all_scores)[::-1]:
        fpr.append(np.mean(normal_scores >= threshold))
        overlaps = [np.mean(maps[i][region] >= threshold) for i, region in regions]
        pro.append(np.mean(overlaps))
    return np.array(fpr), np.array(pro)


def reference_au_pro(masks, maps, fpr_limit=0.3) -> float:
    """Integrate the reference PRO curve up to ``fpr_limit`` and divide by it."""
    fpr, pro = reference_pro_curve(masks, maps)
    last = np.flatnonzero(fpr <= fpr_limit)[-1]
    x = list(fpr[: last + 1])
    y = list(pro[: last + 1])
    if x[-1] < fpr_limit:
        fraction = (fpr_limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        x.append(fpr_limit)
        y.append(pro[last] + fraction * (pro[last + 1] - pro[last]))
    return np.trapezoid(y, x) / fpr_limit
