"""Defect models of the demo dataset: dents, bumps, holes, cuts, cracks, contamination.

Each defect changes the height grid of one sample inside a small region on a smooth
part of the object. Dents, bumps, cuts, cracks and contamination move the surface
along its normal (to first order: the vertical offset is the normal offset divided by
the cosine of the local slope). Holes cut the surface down vertically, either to the
plane (through hole) or to a flat bottom (blind hole). Contamination also paints a
foreign colour into the rgb image.

These models are independent of any pseudo-anomaly synthesis used for training, so a
model evaluated on the demo data is never tested on its own training distribution.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import ndimage

from .shapes import MM, HeightGrid, bilinear

DEFECT_TYPES = ("dent", "bump", "hole", "cut", "crack", "contamination")

# A pixel is a defect pixel when the defect moves its noise-free depth by more than
# this, or changes whether the sensor can measure it.
MASK_THRESHOLD = 0.1 * MM

# A defect keeps at least this distance from any wall, edge or slope steeper than
# _MAX_SLOPE (56 degrees).
_CLEARANCE_MARGIN = 1.0 * MM
_MAX_SLOPE = 1.5

# Accepted defect sizes as shares of the image, estimated from the changed grid cells
# before rendering. Shadows and grazing losses add a little in the rendered mask, so
# the range sits inside the 0.1 % to 3 % of MVTec 3D-AD.
_MIN_SHARE = 0.0012
_MAX_SHARE = 0.025
_MAX_ATTEMPTS = 200

# Colours of foreign material, chosen to differ from the object's own colour.
_CONTAMINATION_COLOURS = (
    (0.85, 0.15, 0.10),
    (0.10, 0.65, 0.20),
    (0.95, 0.85, 0.15),
    (0.15, 0.35, 0.90),
    (0.95, 0.95, 0.92),
)


@dataclasses.dataclass(frozen=True)
class Defect:
    """A defect placed on one sample's height grid.

    ``heights`` and ``labels`` replace the grid inside ``region`` (row and column
    slices). ``paint`` contains the weights of ``paint_colour`` in the rgb image inside
    the region (contamination only). ``parameters`` describe the defect for the
    manifest, with lengths in millimetres in the plane frame.
    """

    kind: str
    region: tuple[slice, slice]
    heights: np.ndarray
    labels: np.ndarray
    paint: np.ndarray | None
    paint_colour: np.ndarray | None
    parameters: dict

    def apply(self, grid: HeightGrid) -> HeightGrid:
        """Return a copy of ``grid`` with the defect cut or added in."""
        heights = grid.heights.copy()
        labels = grid.labels.copy()
        heights[self.region] = self.heights
        labels[self.region] = self.labels
        return dataclasses.replace(grid, heights=heights, labels=labels)

    def bounds(self, grid: HeightGrid) -> tuple[float, float, float, float]:
        """Return the plane-frame box ``(x_min, x_max, y_min, y_max)`` of the region."""
        rows, cols = self.region
        return (
            grid.x0 + cols.start * grid.step,
            grid.x0 + (cols.stop - 1) * grid.step,
            grid.y0 + rows.start * grid.step,
            grid.y0 + (rows.stop - 1) * grid.step,
        )

    def paint_at(self, grid: HeightGrid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the paint weight at plane points ``(x, y)``, 0 outside the region."""
        weights = np.zeros(np.shape(x))
        if self.paint is None:
            return weights
        rows, cols = self.region
        x0 = grid.x0 + cols.start * grid.step
        y0 = grid.y0 + rows.start * grid.step
        fx = (x - x0) / grid.step
        fy = (y - y0) / grid.step
        ny, nx = self.paint.shape
        inside = (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
        weights[inside] = bilinear(self.paint, fx[inside], fy[inside])
        return weights


@dataclasses.dataclass(frozen=True)
class _Surface:
    """Clearance and slope of the defect-free grid on cells of about 0.5 mm.

    ``clearance`` is the distance from each coarse cell to the nearest wall, edge or
    steep slope, and 0 off the object. ``slope_factor`` is ``1 / cos(slope)``, capped
    at 2, which turns a normal offset into a vertical one.
    """

    grid: HeightGrid
    stride: int
    clearance: np.ndarray
    slope_factor: np.ndarray

    def _cells(self, x, y):
        grid = self.grid
        ny, nx = self.clearance.shape
        spacing = grid.step * self.stride
        col = np.clip(np.rint((x - grid.x0) / spacing).astype(np.intp), 0, nx - 1)
        row = np.clip(np.rint((y - grid.y0) / spacing).astype(np.intp), 0, ny - 1)
        return row, col

    def clearance_at(self, x, y) -> np.ndarray:
        return self.clearance[self._cells(x, y)]

    def slope_factor_at(self, x, y) -> np.ndarray:
        return self.slope_factor[self._cells(x, y)]


def _surface(grid: HeightGrid) -> _Surface:
    stride = max(1, round(0.5 * MM / grid.step))
    spacing = grid.step * stride
    heights = grid.heights[::stride, ::stride]
    labels = grid.labels[::stride, ::stride]
    # Slopes of the heights smoothed over 1 mm, so that small normal features (treads,
    # grooves) do not block placement but walls and silhouettes do.
    smooth = ndimage.gaussian_filter(heights, sigma=1.0 * MM / spacing)
    slope_y, slope_x = np.gradient(smooth, spacing)
    slope = np.hypot(slope_x, slope_y)
    flat_enough = (labels > 0) & (heights > 0.3 * MM) & (slope < _MAX_SLOPE)
    clearance = ndimage.distance_transform_edt(flat_enough) * spacing
    slope_factor = np.minimum(np.sqrt(1.0 + slope * slope), 2.0)
    return _Surface(grid, stride, clearance, slope_factor)


def _region(grid: HeightGrid, x_min, x_max, y_min, y_max) -> tuple[slice, slice]:
    """Return grid slices covering a plane box, with two spare cells on each side."""
    ny, nx = grid.shape
    c0 = max(int(np.floor((x_min - grid.x0) / grid.step)) - 2, 0)
    c1 = min(int(np.ceil((x_max - grid.x0) / grid.step)) + 3, nx)
    r0 = max(int(np.floor((y_min - grid.y0) / grid.step)) - 2, 0)
    r1 = min(int(np.ceil((y_max - grid.y0) / grid.step)) + 3, ny)
    return slice(r0, r1), slice(c0, c1)


def _region_coordinates(grid: HeightGrid, region) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = region
    x = grid.x0 + grid.step * np.arange(cols.start, cols.stop)
    y = grid.y0 + grid.step * np.arange(rows.start, rows.stop)
    return np.meshgrid(x, y)


def _pick_centre(surface: _Surface, rng: np.random.Generator, clearance: float):
    """Return a random point with at least ``clearance`` to walls, or None."""
    candidates = np.flatnonzero(surface.clearance.ravel() >= clearance)
    if not len(candidates):
        return None
    index = candidates[rng.integers(len(candidates))]
    row, col = np.unravel_index(index, surface.clearance.shape)
    grid = surface.grid
    spacing = grid.step * surface.stride
    return np.array([grid.x0 + col * spacing, grid.y0 + row * spacing])


def _segment_distance(x, y, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Return the distance to a segment and the share (0 to 1) of its closest point."""
    direction = end - start
    length2 = max(float(direction @ direction), 1e-18)
    position = np.clip(
        ((x - start[0]) * direction[0] + (y - start[1]) * direction[1]) / length2, 0, 1
    )
    dx = x - (start[0] + position * direction[0])
    dy = y - (start[1] + position * direction[1])
    return np.hypot(dx, dy), position


def _random_walk(rng, start, heading, n_steps, step_length) -> np.ndarray:
    """Return the vertices of a random walk whose heading drifts by about 25 degrees."""
    vertices = [np.asarray(start, dtype=np.float64)]
    for _ in range(n_steps):
        heading += rng.normal(0.0, np.radians(25.0))
        length = step_length * rng.uniform(0.7, 1.3)
        vertices.append(
            vertices[-1] + length * np.array([np.cos(heading), np.sin(heading)])
        )
    return np.array(vertices)


def _displaced(surface: _Surface, region, displacement: np.ndarray):
    """Move the surface by ``displacement`` along its normal inside ``region``."""
    grid = surface.grid
    heights = grid.heights[region]
    labels = grid.labels[region]
    x, y = _region_coordinates(grid, region)
    factor = surface.slope_factor_at(x, y)
    offset = np.where(labels > 0, displacement * factor, 0.0)
    new_heights = np.maximum(heights + offset, 0.0)
    return new_heights, np.where(new_heights > 0, labels, 0).astype(np.uint8)


def _dent_or_bump(kind, surface, rng, pitch):
    radius = max(rng.uniform(3.0, 6.0) * MM, 1.5 * pitch)
    amplitude = rng.uniform(0.6, 1.5) * MM
    sign = -1.0 if kind == "dent" else 1.0
    centre = _pick_centre(surface, rng, radius + _CLEARANCE_MARGIN)
    if centre is None:
        return None
    region = _region(
        surface.grid,
        *(centre[0] + radius * np.array([-1, 1])),
        *(centre[1] + radius * np.array([-1, 1])),
    )
    x, y = _region_coordinates(surface.grid, region)
    r2 = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / radius**2
    displacement = sign * amplitude * np.clip(1.0 - r2, 0.0, None) ** 2
    heights, labels = _displaced(surface, region, displacement)
    parameters = {
        "centre_mm": centre / MM,
        "radius_mm": radius / MM,
        "depth_mm": sign * amplitude / MM,
    }
    return region, heights, labels, None, parameters


def _hole(surface, rng, pitch):
    radius = max(rng.uniform(2.5, 4.5) * MM, 1.2 * pitch)
    through = bool(rng.random() < 0.5)
    depth = rng.uniform(2.0, 5.0) * MM
    centre = _pick_centre(surface, rng, radius + _CLEARANCE_MARGIN)
    if centre is None:
        return None
    grid = surface.grid
    region = _region(
        grid,
        *(centre[0] + radius * np.array([-1, 1])),
        *(centre[1] + radius * np.array([-1, 1])),
    )
    x, y = _region_coordinates(grid, region)
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2
    heights = grid.heights[region].copy()
    bottom = 0.0 if through else heights - depth
    # A blind hole whose bottom would come within 0.3 mm of the plane goes through.
    bottom = np.where(bottom < 0.3 * MM, 0.0, bottom)
    heights = np.where(inside, bottom, heights)
    labels = np.where(heights > 0, grid.labels[region], 0).astype(np.uint8)
    parameters = {
        "centre_mm": centre / MM,
        "radius_mm": radius / MM,
        "through": through,
        "depth_mm": None if through else depth / MM,
    }
    return region, heights, labels, None, parameters


def _path_clear(surface, vertices, half_width) -> bool:
    """Return whether every point along a polyline keeps clear of walls."""
    points = [vertices[0]]
    for start, end in itertools.pairwise(vertices):
        n = max(2, int(np.ceil(np.linalg.norm(end - start) / (0.25 * MM))))
        points.extend(start + (end - start) * s for s in np.linspace(0, 1, n)[1:])
    points = np.array(points)
    clearance = surface.clearance_at(points[:, 0], points[:, 1])
    return bool((clearance >= half_width + _CLEARANCE_MARGIN).all())


def _polyline_region(grid: HeightGrid, walks, widest: float) -> tuple[slice, slice]:
    vertices = np.concatenate(walks)
    return _region(
        grid,
        vertices[:, 0].min() - widest,
        vertices[:, 0].max() + widest,
        vertices[:, 1].min() - widest,
        vertices[:, 1].max() + widest,
    )


def _groove_profile(x, y, vertices, half_width_at, v_shaped: bool) -> np.ndarray:
    """Return the groove depth profile (0 to 1) around a polyline at points ``(x, y)``.

    ``half_width_at(s)`` gives the half-width at arc-length share ``s`` (0 to 1). The
    cross-section is a V (cracks) or a parabola (cuts).
    """
    lengths = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(lengths)])
    nearest = np.full(x.shape, np.inf)
    share = np.zeros(x.shape)
    for i, (start, end) in enumerate(itertools.pairwise(vertices)):
        distance, position = _segment_distance(x, y, start, end)
        closer = distance < nearest
        nearest = np.where(closer, distance, nearest)
        share = np.where(closer, (arc[i] + position * lengths[i]) / arc[-1], share)
    across = nearest / half_width_at(share)
    if v_shaped:
        return np.clip(1.0 - across, 0.0, None)
    return np.clip(1.0 - across**2, 0.0, None)


def _cut(surface, rng, pitch):
    length = rng.uniform(15.0, 25.0) * MM
    half_width = 0.5 * max(rng.uniform(1.2, 2.0) * MM, 1.2 * pitch)
    depth = rng.uniform(0.5, 1.2) * MM
    centre = _pick_centre(surface, rng, half_width + _CLEARANCE_MARGIN)
    if centre is None:
        return None
    angle = rng.uniform(0, np.pi)
    direction = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    vertices = np.array([centre - direction, centre + direction])
    if not _path_clear(surface, vertices, half_width):
        return None

    def half_width_at(share):
        return np.full(np.shape(share), half_width)

    region = _polyline_region(surface.grid, [vertices], half_width)
    x, y = _region_coordinates(surface.grid, region)
    profile = _groove_profile(x, y, vertices, half_width_at, v_shaped=False)
    heights, labels = _displaced(surface, region, -depth * profile)
    parameters = {
        "start_mm": vertices[0] / MM,
        "end_mm": vertices[1] / MM,
        "width_mm": 2 * half_width / MM,
        "depth_mm": depth / MM,
    }
    return region, heights, labels, None, parameters


def _crack(surface, rng, pitch):
    half_width = 0.5 * max(rng.uniform(0.8, 1.4) * MM, 1.2 * pitch)
    depth = rng.uniform(0.4, 1.0) * MM
    n_steps = int(rng.integers(8, 15))
    step_length = rng.uniform(1.5, 2.5) * MM
    centre = _pick_centre(surface, rng, half_width + _CLEARANCE_MARGIN)
    if centre is None:
        return None
    heading = rng.uniform(0, 2 * np.pi)
    walks = [_random_walk(rng, centre, heading, n_steps, step_length)]
    if rng.random() < 0.4:
        fork = walks[0][int(rng.integers(1, n_steps))]
        branch_heading = heading + rng.choice([-1.0, 1.0]) * np.radians(40.0)
        walks.append(
            _random_walk(rng, fork, branch_heading, max(3, n_steps // 2), step_length)
        )
    if not all(_path_clear(surface, walk, half_width) for walk in walks):
        return None

    # A crack is widest in its middle and narrows to 60 % at its ends.
    def half_width_at(share):
        return half_width * (0.6 + 0.4 * np.sin(np.pi * share))

    region = _polyline_region(surface.grid, walks, half_width)
    x, y = _region_coordinates(surface.grid, region)
    profile = np.zeros(x.shape)
    for walk in walks:
        profile = np.maximum(
            profile, _groove_profile(x, y, walk, half_width_at, v_shaped=True)
        )
    heights, labels = _displaced(surface, region, -depth * profile)
    parameters = {
        "vertices_mm": [walk / MM for walk in walks],
        "width_mm": 2 * half_width / MM,
        "depth_mm": depth / MM,
    }
    return region, heights, labels, None, parameters


def _contamination(surface, rng, pitch, object_colour):
    n_caps = int(rng.integers(3, 6))
    offsets = rng.uniform(-1.5 * MM, 1.5 * MM, size=(n_caps, 2))
    radii = np.maximum(rng.uniform(1.2, 2.2, size=n_caps) * MM, 1.0 * pitch)
    heights_caps = rng.uniform(0.4, 0.9, size=n_caps) * MM
    extent = float((np.linalg.norm(offsets, axis=1) + radii).max())
    distances = np.linalg.norm(np.array(_CONTAMINATION_COLOURS) - object_colour, axis=1)
    palette = [c for c, d in zip(_CONTAMINATION_COLOURS, distances) if d > 0.4]
    colour = np.array(palette[int(rng.integers(len(palette)))])

    centre = _pick_centre(surface, rng, extent + _CLEARANCE_MARGIN)
    if centre is None:
        return None

    grid = surface.grid
    region = _region(
        grid,
        centre[0] - extent,
        centre[0] + extent,
        centre[1] - extent,
        centre[1] + extent,
    )
    x, y = _region_coordinates(grid, region)
    blob = np.zeros(x.shape)
    for offset, radius, height in zip(offsets, radii, heights_caps):
        r2 = (
            (x - centre[0] - offset[0]) ** 2 + (y - centre[1] - offset[1]) ** 2
        ) / radius**2
        blob = np.maximum(blob, height * np.sqrt(np.clip(1.0 - r2, 0.0, None)))
    heights, labels = _displaced(surface, region, blob)

    # The foreign colour covers only the cells the blob raises by more than the mask
    # threshold, so the painted pixels lie inside the gt mask.
    paint = np.clip((blob - MASK_THRESHOLD) / (0.5 * MASK_THRESHOLD), 0.0, 1.0)
    parameters = {
        "centre_mm": centre / MM,
        "cap_radii_mm": radii / MM,
        "cap_heights_mm": heights_caps / MM,
        "colour": colour,
    }
    return region, heights, labels, (paint, colour), parameters


def _to_builtin(value):
    """Convert NumPy values in nested parameters to JSON-ready Python values."""
    if isinstance(value, dict):
        return {key: _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(item) for item in value]
    if isinstance(value, np.ndarray):
        return _to_builtin(value.tolist())
    if isinstance(value, (np.floating, float)):
        return round(float(value), 4)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def place_defect(
    kind: str,
    grid: HeightGrid,
    rng: np.random.Generator,
    pixel_pitch: float,
    n_pixels: int,
    object_colour: np.ndarray,
) -> Defect:
    """Draw a defect of ``kind`` on the object of ``grid``.

    Parameters are drawn again until the defect fits on a smooth part of the object
    and its estimated size lies between 0.12 % and 2.5 % of the image's ``n_pixels``.
    ``pixel_pitch`` is the pixel width in metres at the working distance. Thin defects
    are made at least 1.2 pixels wide, so that the image resolves them.

    Raises
    ------
    ValueError
        If ``kind`` is not one of ``DEFECT_TYPES``.
    RuntimeError
        If no placement fits within 200 attempts, because the object has no smooth
        part large enough for this defect.
    """
    if kind not in DEFECT_TYPES:
        raise ValueError(
            f"Unknown defect type {kind!r}. Known defect types: "
            f"{', '.join(DEFECT_TYPES)}."
        )
    surface = _surface(grid)
    # Pixels per grid cell: every view ray is within 15 degrees of the plane normal, so
    # the plane-frame area of a defect is close to its area in the image.
    cell_pixels = (grid.step / pixel_pitch) ** 2
    for _ in range(_MAX_ATTEMPTS):
        if kind in ("dent", "bump"):
            drawn = _dent_or_bump(kind, surface, rng, pixel_pitch)
        elif kind == "hole":
            drawn = _hole(surface, rng, pixel_pitch)
        elif kind == "cut":
            drawn = _cut(surface, rng, pixel_pitch)
        elif kind == "crack":
            drawn = _crack(surface, rng, pixel_pitch)
        else:
            drawn = _contamination(surface, rng, pixel_pitch, object_colour)
        if drawn is None:
            continue
        region, heights, labels, paint, parameters = drawn
        changed = np.abs(heights - grid.heights[region]) > MASK_THRESHOLD
        estimated = float(changed.sum()) * cell_pixels
        if not _MIN_SHARE * n_pixels <= estimated <= _MAX_SHARE * n_pixels:
            continue
        paint_weights, paint_colour = paint if paint is not None else (None, None)
        return Defect(
            kind=kind,
            region=region,
            heights=heights,
            labels=labels,
            paint=paint_weights,
            paint_colour=paint_colour,
            parameters=_to_builtin(parameters),
        )
    raise RuntimeError(
        f"Could not place a {kind} defect within {_MAX_ATTEMPTS} attempts: the object "
        "has no smooth part large enough for it (walls, edges and slopes over 56 "
        "degrees are avoided). Use a larger or flatter object, or leave out this "
        "defect type."
    )
