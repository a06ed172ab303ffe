"""Detection and localization metrics: image AUROC, pixel AUROC and AU-PRO.

All three rank scores once with ``np.argsort`` and walk the sorted order from the
highest score down in chunks, treating tied scores as one threshold. Memory stays
linear in the number of pixels: per pixel a copy of the score, an int32 code, an intp
sort index and a bool, plus one chunk of work.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ._validation import as_float_array

__all__ = ["UndefinedMetricWarning", "au_pro", "auroc", "pixel_auroc", "pro_curve"]

logger = logging.getLogger(__name__)

# Number of sorted pixels processed per step of the threshold walk.
_CHUNK = 1 << 18

# 8-connectivity for defect regions inside one image.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class UndefinedMetricWarning(UserWarning):
    """Warning issued when a metric is undefined for its input, such as AUROC with one
    class. The metric then returns NaN (or empty arrays for a curve)."""


# --------------------------------------------------------------------------- checks


def _check_binary(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a bool array, accepting bool or numbers that are 0 or 1."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(
            f"{name} must be a binary array, but got {type(value).__name__}."
        )
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise TypeError(f"{name} must be a binary array: {error}") from None
    if array.dtype == np.bool_:
        return array
    if not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(
            f"{name} must be a bool array or numbers that are 0 or 1, but got dtype "
            f"{array.dtype}."
        )
    binary = (array == 0) | (array == 1)
    if not binary.all():
        found = np.unique(array[~binary])
        listed = ", ".join(repr(v) for v in found[:10].tolist())
        more = f" and {found.size - 10} more" if found.size > 10 else ""
        raise ValueError(
            f"{name} must contain only 0 and 1 (or False and True), but it also "
            f"contains {listed}{more}. For a mask stored as 0/255, pass {name} > 0."
        )
    return array.astype(bool)


# Integers above this in magnitude can round to the same float64.
_EXACT_FLOAT64_INT = 2**53


def _check_scores(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a finite 1-D float32 or float64 array.

    Integer scores beyond 2**53 in magnitude are replaced by their ranks, which
    float64 represents exactly. AUROC depends only on the order of the scores.
    """
    raw = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if raw.dtype.kind in "iu" and raw.ndim == 1 and raw.size:
        if max(abs(int(raw.max())), abs(int(raw.min()))) > _EXACT_FLOAT64_INT:
            value = np.unique(raw, return_inverse=True)[1].astype(np.float64)
    array = as_float_array(value, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, but got shape {array.shape}.")
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(array.size - finite.sum()) - n_nan
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values out of "
            f"{array.size}. Every score must be finite: replace or drop those samples."
        )
    return array


def _check_fpr_limit(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fpr_limit must be a real number, but got {value!r}.")
    limit = float(value)
    if not 0.0 < limit <= 1.0:
        raise ValueError(
            f"fpr_limit must be in (0, 1], but got {value!r}. The usual limit is 0.3."
        )
    return limit


def _as_image_list(value: Any, name: str) -> list[Any]:
    """Split ``value`` into a list of per-image 2-D array-likes."""
    if isinstance(value, np.ndarray):
        if value.ndim != 3:
            hint = f" For a single image, pass {name}[None]." if value.ndim == 2 else ""
            raise ValueError(
                f"{name} must have shape (n_images, H, W) or be a list of 2-D arrays, "
                f"but got shape {value.shape}.{hint}"
            )
        return list(value)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be an array of shape (n_images, H, W) or a list of 2-D "
            f"arrays, but got {type(value).__name__}."
        )
    return list(value)


def _pair_images(masks: Any, anomaly_maps: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check masks and maps image by image and return (bool mask, float map) pairs."""
    if isinstance(masks, np.ndarray) and isinstance(anomaly_maps, np.ndarray):
        if masks.shape != anomaly_maps.shape:
            raise ValueError(
                f"masks and anomaly_maps must have the same shape, but got masks "
                f"{masks.shape} and anomaly_maps {anomaly_maps.shape}."
            )
    mask_list = _as_image_list(masks, "masks")
    map_list = _as_image_list(anomaly_maps, "anomaly_maps")
    if len(mask_list) != len(map_list):
        raise ValueError(
            f"masks and anomaly_maps must contain the same number of images, but got "
            f"{len(mask_list)} masks and {len(map_list)} anomaly maps."
        )
    if not mask_list:
        raise ValueError("masks and anomaly_maps must contain at least one image.")

    pairs = []
    for i, (mask, score_map) in enumerate(zip(mask_list, map_list)):
        mask = _check_binary(mask, f"masks[{i}]")
        score_map = as_float_array(score_map, f"anomaly_maps[{i}]")
        if mask.ndim != 2 or score_map.ndim != 2 or mask.shape != score_map.shape:
            raise ValueError(
                f"masks[{i}] and anomaly_maps[{i}] must be 2-D arrays of the same "
                f"shape, but got masks[{i}] {mask.shape} and anomaly_maps[{i}] "
                f"{score_map.shape}."
            )
        n_inf = int(np.isinf(score_map).sum())
        if n_inf:
            raise ValueError(
                f"anomaly_maps[{i}] contains {n_inf} infinite values. Use NaN for "
                "pixels without a score (they are left out of the metric), or clip the "
                "scores."
            )
        pairs.append((mask, score_map))
    return pairs


# ----------------------------------------------------------------- pixel collection


def _collect_pixels(
    pairs: list[tuple[np.ndarray, np.ndarray]], *, with_regions: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gather the scored (non-NaN) pixels of all images into flat arrays.

    Returns ``(scores, codes, region_sizes)``. ``codes`` is 0 for a normal pixel and
    ``1 + r`` for a pixel of defect region ``r``, but without ``with_regions`` every
    defect pixel gets code 1. ``region_sizes[r]`` counts the scored pixels of region
    ``r``. Regions are the 8-connected components of each image's full mask, so a NaN
    hole does not split a region, and a region whose pixels are all NaN is dropped.
    """
    dtype = np.result_type(*(score_map.dtype for _, score_map in pairs))
    scored = [~np.isnan(score_map) for _, score_map in pairs]
    total = sum(int(keep.sum()) for keep in scored)
    scores = np.empty(total, dtype)
    codes = np.empty(total, np.int32)

    sizes = []
    offset = 0
    n_regions = 0
    for (mask, score_map), keep in zip(pairs, scored):
        count = int(keep.sum())
        scores[offset : offset + count] = score_map[keep]
        if with_regions:
            labels, n_labels = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            image_codes = labels[keep]
            image_sizes = np.bincount(image_codes, minlength=n_labels + 1)[1:]
            # Renumber so that regions without a scored pixel get no code.
            renumber = np.zeros(n_labels + 1, np.int32)
            present = image_sizes > 0
            renumber[1:][present] = n_regions + 1 + np.arange(int(present.sum()))
            codes[offset : offset + count] = renumber[image_codes]
            sizes.append(image_sizes[present])
            n_regions += int(present.sum())
        else:
            codes[offset : offset + count] = mask[keep]
        offset += count

    region_sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return scores, codes, region_sizes.astype(np.int64)


def _walk_thresholds(
    scores: np.ndarray, codes: np.ndarray, weights: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield the cumulative counts at each distinct score, from the highest down.

    Each yielded chunk contains three arrays with one entry per distinct score ``t``:
    the number of pixels with score ``>= t`` and the number of those that are normal
    (code 0). The third is the sum of their weights, or None without ``weights``
    (one float per code, 0 for code 0).
    """
    n = scores.size
    order = np.argsort(scores)
    seen = 0
    normal_seen = 0
    weight_seen = 0.0
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        # Positions start..stop-1 of the descending order, plus the next one so that
        # the last tie group of the chunk can be closed.
        begin = n - stop - 1 if stop < n else 0
        index = order[begin : n - start][::-1]
        chunk_scores = scores[index]
        if stop < n:
            is_end = chunk_scores[:-1] != chunk_scores[1:]
            index = index[:-1]
        else:
            is_end = np.ones(index.size, dtype=bool)
            is_end[:-1] = chunk_scores[:-1] != chunk_scores[1:]
        chunk_codes = codes[index]

        normal = np.cumsum(chunk_codes == 0, dtype=np.int64)
        normal += normal_seen
        ends = np.flatnonzero(is_end)

        weight_sums = None
        if weights is not None:
            cumulative = np.cumsum(weights[chunk_codes])
            cumulative += weight_seen
            weight_sums = cumulative[ends]
            weight_seen = float(cumulative[-1])

        # A chunk inside one long tie group closes no group and yields nothing.
        if ends.size:
            yield seen + 1 + ends, normal[ends], weight_sums
        seen += index.size
        normal_seen = int(normal[-1])


# -------------------------------------------------------------------------- AUROC


def _auroc_from_codes(scores: np.ndarray, codes: np.ndarray, samples: str) -> float:
    n_positive = int(np.count_nonzero(codes))
    n_negative = codes.size - n_positive
    if n_positive == 0 or n_negative == 0:
        warnings.warn(
            f"AUROC is undefined because the {samples} contain {n_negative} normal "
            f"and {n_positive} anomalous samples, but both classes are needed. "
            "Returning NaN.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return float("nan")

    # Trapezoids of the ROC curve in count units: twice the Mann-Whitney U, with a
    # tie between a positive and a negative counted as one half. Integers stay exact.
    twice_u = 0
    previous_negative = 0
    previous_positive = 0
    for counts, negative, _ in _walk_thresholds(scores, codes, None):
        positive = counts - negative
        negative_before = np.concatenate(([previous_negative], negative[:-1]))
        positive_before = np.concatenate(([previous_positive], positive[:-1]))
        steps = (negative - negative_before) * (positive + positive_before)
        twice_u += int(steps.sum())
        previous_negative = int(negative[-1])
        previous_positive = int(positive[-1])
    return twice_u / (2.0 * n_positive * n_negative)


def auroc(labels: Any, scores: Any) -> float:
    """Compute the area under the ROC curve of image-level anomaly scores.

    The value is the Mann-Whitney probability that an anomalous sample scores higher
    than a normal one, with ties counted as one half. It equals
    ``sklearn.metrics.roc_auc_score(labels, scores)``.

    Parameters
    ----------
    labels : array-like of shape (n_samples,), bool or 0/1
        1 (True) for an anomalous sample, 0 (False) for a normal one.
    scores : array-like of shape (n_samples,), float
        Anomaly scores, higher meaning more anomalous. Must be finite.

    Returns
    -------
    float
        AUROC in [0, 1], or NaN with :class:`UndefinedMetricWarning` when ``labels``
        contains only one class.

    Raises
    ------
    ValueError
        If the lengths differ, the input is empty, ``labels`` contains values other
        than 0 and 1, or ``scores`` contains NaN or inf.
    TypeError
        If either argument is not numeric.

    Examples
    --------
    >>> from zal3d_core.metrics import auroc
    >>> round(auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]), 6)
    0.888889
    """
    labels = _check_binary(labels, "labels")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, but got shape {labels.shape}.")
    scores = _check_scores(scores, "scores")
    if labels.size != scores.size:
        raise ValueError(
            f"labels and scores must have the same length, but got {labels.size} "
            f"labels and {scores.size} scores."
        )
    if labels.size == 0:
        raise ValueError(
            "labels and scores are empty. AUROC needs at least two samples."
        )
    return _auroc_from_codes(scores, labels.astype(np.int32), "labels")


def pixel_auroc(masks: Any, anomaly_maps: Any) -> float:
    """Compute the AUROC over all pixels that have a score.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W), or list of 2-D arrays
        Ground truth, True (or 1) on defect pixels. Images in a list may differ in size.
    anomaly_maps : array-like matching ``masks``, float
        Per-pixel anomaly scores. NaN pixels (no score, e.g. off the object) are left
        out, and inf is rejected.

    Returns
    -------
    float
        Pixel AUROC, or NaN with :class:`UndefinedMetricWarning` when the scored pixels
        are all normal or all defective.

    Raises
    ------
    ValueError
        If shapes differ, masks are not binary, or a map contains inf.
    """
    pairs = _pair_images(masks, anomaly_maps)
    scores, codes, _ = _collect_pixels(pairs, with_regions=False)
    logger.debug("pixel AUROC over %d scored pixels", scores.size)
    return _auroc_from_codes(scores, codes, "scored pixels")


# ------------------------------------------------------------------------- AU-PRO


def _pro_inputs(
    masks: Any, anomaly_maps: Any, undefined_result: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Return ``(scores, codes, weights, n_normal)``, or None after warning when the
    PRO curve is undefined. The warning names ``undefined_result``, what the caller
    returns then."""
    pairs = _pair_images(masks, anomaly_maps)
    scores, codes, region_sizes = _collect_pixels(pairs, with_regions=True)
    n_regions = region_sizes.size
    n_normal = int(np.count_nonzero(codes == 0))

    if n_regions == 0:
        warnings.warn(
            "The PRO curve is undefined because no defect region exists: every mask is "
            f"empty or covers only NaN pixels. Returning {undefined_result}.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return None
    if n_normal == 0:
        warnings.warn(
            "The PRO curve is undefined because no normal pixel has a score, so the "
            f"false positive rate cannot be computed. Returning {undefined_result}.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return None

    logger.debug(
        "PRO curve over %d scored pixels, %d normal, %d defect regions",
        scores.size,
        n_normal,
        n_regions,
    )
    # Each region weighs 1 / n_regions in the mean, spread evenly over its pixels.
    weights = np.zeros(n_regions + 1, np.float64)
    weights[1:] = 1.0 / (n_regions * region_sizes.astype(np.float64))
    return scores, codes, weights, n_normal


def _walk_pro(
    scores: np.ndarray, codes: np.ndarray, weights: np.ndarray, n_normal: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield chunks of PRO curve points as (false positives as counts, PRO)."""
    n_defect = scores.size - n_normal
    for counts, normal, weight_sums in _walk_thresholds(scores, codes, weights):
        pro = np.minimum(weight_sums, 1.0)
        # Once every defect pixel is above the threshold PRO is 1, and setting it
        # exactly keeps a perfect separation at exactly 1.0 despite rounding.
        pro[counts - normal == n_defect] = 1.0
        yield normal, pro


def pro_curve(masks: Any, anomaly_maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Compute the exact per-region overlap (PRO) curve.

    For a threshold ``t``, the false positive rate is the share of normal pixels, over
    all images, with score ``>= t``, and PRO is the mean over all defect regions of the
    share of each region's pixels with score ``>= t``. Defect regions are the
    8-connected components of each image's mask. The curve has one point per distinct
    score, from the highest down, and starts at (0, 0).

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W), or list of 2-D arrays
        Ground truth, True (or 1) on defect pixels. Images without defects add only
        normal pixels.
    anomaly_maps : array-like matching ``masks``, float
        Per-pixel anomaly scores. NaN pixels are left out of both rates, and inf is
        rejected.

    Returns
    -------
    fpr, pro : ndarray of shape (n_distinct_scores + 1,), float64
        Non-decreasing, from (0, 0) to (1, 1). Both are empty, with
        :class:`UndefinedMetricWarning`, when there is no defect region or no normal
        pixel.

    Raises
    ------
    ValueError
        If shapes differ, masks are not binary, or a map contains inf.
    """
    inputs = _pro_inputs(masks, anomaly_maps, "empty arrays")
    if inputs is None:
        return np.zeros(0), np.zeros(0)
    scores, codes, weights, n_normal = inputs
    fpr_parts = [np.zeros(1)]
    pro_parts = [np.zeros(1)]
    for normal, pro in _walk_pro(scores, codes, weights, n_normal):
        fpr_parts.append(normal / n_normal)
        pro_parts.append(pro)
    return np.concatenate(fpr_parts), np.concatenate(pro_parts)


def au_pro(
    masks: Any,
    anomaly_maps: Any,
    fpr_limit: float = 0.3,
    *,
    return_curve: bool = False,
) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Compute the normalized area under the PRO curve up to a false positive rate.

    The exact PRO curve (see :func:`pro_curve`) is integrated with the trapezoid rule
    from FPR 0 to ``fpr_limit``, with PRO interpolated linearly at ``fpr_limit``, and
    the area is divided by ``fpr_limit``. The result therefore lies in [0, 1], and a
    perfect separation gives exactly 1.0.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W), or list of 2-D arrays
        Ground truth, True (or 1) on defect pixels. Images in a list may differ in size.
    anomaly_maps : array-like matching ``masks``, float
        Per-pixel anomaly scores. NaN pixels are left out, and inf is rejected. Scores
        are ranked in their own dtype (float32 or float64), so converting float64 maps
        to float32 first can merge close scores into ties.
    fpr_limit : float, default 0.3
        Upper end of the integrated FPR range, in (0, 1].
    return_curve : bool, default False
        Also return the integrated part of the curve: the points with FPR up to
        ``fpr_limit`` plus the interpolated point at ``fpr_limit``.

    Returns
    -------
    float
        AU-PRO in [0, 1], or NaN with :class:`UndefinedMetricWarning` when there is no
        defect region or no normal pixel.
    fpr, pro : ndarray, float64
        Only with ``return_curve``. ``np.trapezoid(pro, fpr) / fpr_limit`` equals the
        AU-PRO. Empty when the AU-PRO is NaN.

    Raises
    ------
    ValueError
        If ``fpr_limit`` is outside (0, 1], shapes differ, masks are not binary, or a
        map contains inf.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core.metrics import au_pro
    >>> masks = np.zeros((1, 4, 4), bool)
    >>> masks[0, :2, :2] = True
    >>> au_pro(masks, masks + 0.5)
    1.0
    """
    limit = _check_fpr_limit(fpr_limit)
    inputs = _pro_inputs(masks, anomaly_maps, "NaN")
    if inputs is None:
        if return_curve:
            return float("nan"), np.zeros(0), np.zeros(0)
        return float("nan")
    scores, codes, weights, n_normal = inputs

    # Integrate 1 - PRO, with false positives counted in pixels: the x steps are then
    # integers that add up exactly, the gap is 0 wherever PRO is 1, and so a perfect
    # separation gives exactly 1.0. ``x_limit`` is fpr_limit in the same unit.
    x_limit = limit * n_normal
    gap_area = 0.0
    last_x = 0.0
    last_pro = 0.0
    curve_x = [np.zeros(1)]
    curve_pro = [np.zeros(1)]
    for normal, pro in _walk_pro(scores, codes, weights, n_normal):
        inside = int(np.searchsorted(normal, x_limit, side="right"))
        x = np.concatenate(([last_x], normal[:inside]))
        y = np.concatenate(([last_pro], pro[:inside]))
        gap = 1.0 - y
        gap_area += float(np.sum(np.diff(x) * (gap[:-1] + gap[1:]) * 0.5))
        last_x = float(x[-1])
        last_pro = float(y[-1])
        if return_curve:
            curve_x.append(normal[:inside])
            curve_pro.append(pro[:inside])
        if inside == normal.size:
            continue
        if last_x < x_limit:
            next_x = float(normal[inside])
            next_pro = float(pro[inside])
            fraction = (x_limit - last_x) / (next_x - last_x)
            pro_at_limit = min(last_pro + fraction * (next_pro - last_pro), next_pro)
            gap_area += (
                (x_limit - last_x) * ((1.0 - last_pro) + (1.0 - pro_at_limit)) * 0.5
            )
            if return_curve:
                curve_x.append(np.array([x_limit]))
                curve_pro.append(np.array([pro_at_limit]))
        break

    # Rounding could push the value slightly below 0 when PRO stays 0 up to the limit.
    value = max(0.0, 1.0 - gap_area / x_limit)
    if not return_curve:
        return value
    fpr = np.concatenate(curve_x) / n_normal
    fpr[-1] = min(fpr[-1], limit)
    return value, fpr, np.concatenate(curve_pro)
