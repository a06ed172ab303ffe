"""Result tables (Markdown, CSV) and heatmap pictures of anomaly maps."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["colorize", "depth_image", "heatmap_panel", "markdown_tables", "csv_text"]

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red,
# orange, pale yellow), interpolated linearly in RGB.
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_MISSING_GREY = np.array([90, 90, 90], dtype=np.uint8)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map a 2-D array to RGB uint8 (dark = low, bright = high); NaN becomes grey."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if vmin is None:
        vmin = float(values[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(values[finite].max()) if finite.any() else 1.0
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.where(finite, values, vmin) - vmin) / span, 0.0, 1.0)
    position = scaled * (len(_ANCHORS) - 1)
    low = np.minimum(position.astype(np.intp), len(_ANCHORS) - 2)
    weight = (position - low)[..., None]
    rgb = _ANCHORS[low] * (1.0 - weight) + _ANCHORS[low + 1] * weight
    out = np.round(rgb).astype(np.uint8)
    out[~finite] = _MISSING_GREY
    return out


def depth_image(xyz: np.ndarray) -> np.ndarray:
    """Render the z channel of an organized cloud as grey RGB (near = bright)."""
    z = xyz[..., 2].astype(np.float64)
    finite = np.isfinite(z)
    out = np.zeros(z.shape + (3,), np.uint8)
    if finite.any():
        lo, hi = np.percentile(z[finite], [1, 99])
        span = hi - lo if hi > lo else 1.0
        grey = np.clip(1.0 - (z - lo) / span, 0.0, 1.0) * 200 + 40
        out[finite] = np.round(grey[finite]).astype(np.uint8)[:, None]
    return out


def _mask_outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def heatmap_panel(
    image: np.ndarray,
    gt: np.ndarray | None,
    anomaly_map: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.55,
) -> np.ndarray:
    """Side-by-side picture: input, ground truth on the input, anomaly map on the input.

    ``image`` is RGB uint8 of the map's (H, W); the defect outline is drawn in cyan on
    the second and third panels; off-object pixels (NaN in the map) stay uncoloured.
    Without ``gt`` (an unlabelled scan) the ground-truth panel is left out.
    """
    image = np.asarray(image, dtype=np.uint8)
    height, width = anomaly_map.shape
    if image.shape[:2] != (height, width):
        raise ValueError(
            f"image has shape {image.shape[:2]}, but the anomaly map has {(height, width)}."
        )
    mask = np.zeros((height, width), bool) if gt is None else np.asarray(gt, bool)
    outline = _mask_outline(mask)

    truth = image.copy()
    red = np.array([230, 40, 40], np.float64)
    truth[mask] = np.round(0.5 * truth[mask] + 0.5 * red).astype(np.uint8)
    truth[outline] = (0, 255, 255)

    colored = colorize(anomaly_map, vmin, vmax).astype(np.float64)
    on_object = np.isfinite(anomaly_map)
    overlay = image.astype(np.float64)
    overlay[on_object] = (1 - alpha) * overlay[on_object] + alpha * colored[on_object]
    overlay = np.round(overlay).astype(np.uint8)
    overlay[outline] = (0, 255, 255)

    gap = np.full((height, 4, 3), 255, np.uint8)
    if gt is None:
        return np.concatenate([image, gap, overlay], axis=1)
    return np.concatenate([image, gap, truth, gap, overlay], axis=1)


def _format(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def markdown_tables(
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[str] = ("au_pro", "image_auroc"),
    classes: Sequence[str] | None = None,
) -> str:
    """Render train x test tables, one per method and metric, with a mean column.

    Rows are result dicts with ``method``, ``train``, ``test`` and the metric keys.
    Columns follow ``classes`` (the dataset's class order) when given, else the order
    in which test classes first appear.
    """
    titles = {"au_pro": "AU-PRO (FPR limit 0.3)", "image_auroc": "Image AUROC",
              "pixel_auroc": "Pixel AUROC"}
    methods = list(dict.fromkeys(row["method"] for row in rows))
    tests = list(dict.fromkeys(row["test"] for row in rows))
    if classes is not None:
        order = {name: i for i, name in enumerate(classes)}
        tests.sort(key=lambda name: order.get(name, len(order)))
    out: list[str] = []
    for method in methods:
        subset = [row for row in rows if row["method"] == method]
        trains = list(dict.fromkeys(row["train"] for row in subset))
        for metric in metrics:
            out.append(f"### {method}: {titles.get(metric, metric)}")
            out.append("")
            out.append("| train \\ test | " + " | ".join(tests) + " | mean |")
            out.append("|---" * (len(tests) + 2) + "|")
            for train in trains:
                cells = {row["test"]: row.get(metric) for row in subset if row["train"] == train}
                values = [cells.get(test) for test in tests]
                line = " | ".join("-" if v is None and test not in cells else _format(v)
                                  for test, v in zip(tests, values))
                out.append(f"| {train} | {line} | {_format(_mean(list(cells.values())))} |")
            out.append("")
    if len(methods) > 1:
        out.append("### Mean over test classes, by method")
        out.append("")
        out.append("| method | " + " | ".join(titles.get(m, m) for m in metrics) + " |")
        out.append("|---" * (len(metrics) + 1) + "|")
        for method in methods:
            subset = [row for row in rows if row["method"] == method]
            means = [_format(_mean([row.get(m) for row in subset])) for m in metrics]
            out.append(f"| {method} | " + " | ".join(means) + " |")
        out.append("")
    return "\n".join(out)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render result rows as CSV with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return buffer.getvalue()
