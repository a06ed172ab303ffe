"""Object models of the demo dataset: height fields over the background plane.

Every object, procedural or made from a real scan, is a height field: a grid of heights
above the background plane in the plane's own frame (x and y in the plane, height
toward the camera), in metres. A camera that looks down at the plane from 0.4 m sees
only the upper envelope of an object, so a height field loses nothing the sensor could
measure. Undercuts become vertical walls, which the sensor model marks as missing.

Each sample draws its own scale (within 3 %), rotation about the plane normal, offset
and shape parameters, as the instances of one MVTec 3D-AD class differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import ndimage, spatial

MM = 1e-3

# Half-width of the albedo noise grid, centred on the optical axis. It covers the whole
# visible plane of every pose (the image is 0.11 m wide at 0.4 m).
_TEXTURE_HALF_WIDTH = 0.11
_TEXTURE_CELL = 1.0 * MM

# Colour of the background plane (label 0): dark grey, as the black or grey supports
# of MVTec 3D-AD.
_PLANE_COLOUR = (0.20, 0.20, 0.22)


@dataclasses.dataclass(frozen=True)
class HeightGrid:
    """Heights and part labels on a regular grid in the plane frame.

    ``heights[i, j]`` is the height in metres above the plane at
    ``x = x0 + j * step``, ``y = y0 + i * step``. Off the object the height is 0 and
    the label is 0. The outermost ring of cells is always 0, so bilinear lookups
    outside the grid return the plane.
    """

    heights: np.ndarray
    labels: np.ndarray
    x0: float
    y0: float
    step: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.heights.shape

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the cell centres."""
        ny, nx = self.heights.shape
        return (
            self.x0,
            self.x0 + (nx - 1) * self.step,
            self.y0,
            self.y0 + (ny - 1) * self.step,
        )

    def sample(self, x: np.ndarray, y: np.ndarray, values: np.ndarray | None = None):
        """Interpolate ``values`` (default: the heights) bilinearly at ``(x, y)``."""
        values = self.heights if values is None else values
        return bilinear(values, (x - self.x0) / self.step, (y - self.y0) / self.step)

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the label of the nearest cell, 0 outside the grid."""
        ny, nx = self.labels.shape
        col = np.rint((x - self.x0) / self.step)
        row = np.rint((y - self.y0) / self.step)
        inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        labels = np.zeros(np.shape(x), dtype=np.uint8)
        labels[inside] = self.labels[
            row[inside].astype(np.intp), col[inside].astype(np.intp)
        ]
        return labels


def bilinear(values: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """Interpolate a 2-D array at fractional column ``fx`` and row ``fy``.

    Points outside the array take the value of the nearest edge cell.
    """
    ny, nx = values.shape
    col = np.clip(np.floor(fx), 0, nx - 2)
    row = np.clip(np.floor(fy), 0, ny - 2)
    tx = np.clip(fx - col, 0.0, 1.0)
    ty = np.clip(fy - row, 0.0, 1.0)
    flat = values.ravel()
    index = row.astype(np.intp) * nx + col.astype(np.intp)
    v00 = flat[index]
    v01 = flat[index + 1]
    v10 = flat[index + nx]
    v11 = flat[index + nx + 1]
    upper = v00 + tx * (v01 - v00)
    lower = v10 + tx * (v11 - v10)
    return upper + ty * (lower - upper)


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Colours and surface finish per label (row 0 is the background plane)."""

    colours: np.ndarray
    texture_amplitude: np.ndarray
    specular: np.ndarray
    texture: np.ndarray
    texture_origin: float = -_TEXTURE_HALF_WIDTH
    texture_cell: float = _TEXTURE_CELL

    def albedo(self, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Return the ``(n, 3)`` albedo at plane points ``(x, y)`` with ``labels``."""
        noise = bilinear(
            self.texture,
            (x - self.texture_origin) / self.texture_cell,
            (y - self.texture_origin) / self.texture_cell,
        )
        factor = 1.0 + self.texture_amplitude[labels] * noise
        return self.colours[labels] * factor[:, None]


@dataclasses.dataclass(frozen=True)
class ObjectModel:
    """One sample's object: its height grid, its appearance and the drawn pose."""

    grid: HeightGrid
    appearance: Appearance
    pose: dict


def _texture_noise(rng: np.random.Generator) -> np.ndarray:
    """Draw smooth noise with unit standard deviation on the albedo grid."""
    n = round(2 * _TEXTURE_HALF_WIDTH / _TEXTURE_CELL) + 1
    noise = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma=1.5, mode="wrap")
    return noise / noise.std()


def _appearance(
    rng: np.random.Generator,
    colours: list[tuple[float, float, float]],
    texture_amplitude: list[float],
    specular: list[float],
) -> Appearance:
    return Appearance(
        colours=np.array([_PLANE_COLOUR, *colours], dtype=np.float64),
        texture_amplitude=np.array([0.04, *texture_amplitude], dtype=np.float64),
        specular=np.array([0.0, *specular], dtype=np.float64),
        texture=_texture_noise(rng),
    )


def grid_step_for(pixel_pitch: float) -> float:
    """Return the height-grid step for an image whose pixels are ``pixel_pitch`` wide.

    Three cells per pixel keep walls and thin grooves sharp in the rendered image. The
    step never exceeds 0.4 mm, so small images still get sharp object outlines.
    """
    return min(pixel_pitch / 3.0, 0.4 * MM)


# --------------------------------------------------------------------------------------
# Procedural classes. Each profile function takes object coordinates (u, v) in metres,
# centred on the object and before scaling, and returns heights and labels.


def _rounded_box_depth(u, v, half_u: float, half_v: float, radius: float) -> np.ndarray:
    """Return the distance to the outline of a rounded rectangle, negative outside."""
    qu = np.abs(u) - (half_u - radius)
    qv = np.abs(v) - (half_v - radius)
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    outside += np.minimum(np.maximum(qu, qv), 0.0) - radius
    return -outside


def _chamfered(depth: np.ndarray, thickness: float, chamfer: float) -> np.ndarray:
    """Return the heights of a slab of ``thickness`` with a 45-degree edge chamfer."""
    heights = thickness - np.maximum(chamfer - depth, 0.0)
    return np.where(depth > 0, heights, 0.0)


def _plate_params(rng: np.random.Generator) -> dict:
    return {
        "hole_offsets": rng.uniform(-0.3 * MM, 0.3 * MM, size=(6, 2)),
        "hole_radius": rng.uniform(3.3, 3.7) * MM,
    }


def _plate_profile(u, v, params: dict):
    """Return the heights and labels of a 76 x 56 x 5 mm plate with six through holes.

    The holes form a 2 x 3 pattern. They sit 22 mm apart along u and along v, so each
    point only needs the distance to its nearest hole centre.
    """
    heights = _chamfered(
        _rounded_box_depth(u, v, 38 * MM, 28 * MM, 8 * MM), 5 * MM, 0.8 * MM
    )
    column = np.clip(np.rint(u / (22 * MM)), -1, 1).astype(np.intp) + 1
    row = (v > 0).astype(np.intp)
    offsets = params["hole_offsets"].reshape(2, 3, 2)
    centre_u = (column - 1) * 22 * MM + offsets[row, column, 0]
    centre_v = (2 * row - 1) * 11 * MM + offsets[row, column, 1]
    rho = np.hypot(u - centre_u, v - centre_v)
    radius = params["hole_radius"]
    rim = np.maximum(5 * MM - np.maximum(radius + 0.5 * MM - rho, 0.0), 0.0)
    heights = np.where(rho < radius, 0.0, np.minimum(heights, rim))
    return heights, (heights > 0).astype(np.uint8)


def _dome_params(rng: np.random.Generator) -> dict:
    waves = []
    for _ in range(3):
        wavelength = rng.uniform(10, 16) * MM
        angle = rng.uniform(0, np.pi)
        waves.append((wavelength, angle, rng.uniform(0, 2 * np.pi)))
    return {"waves": waves, "height": rng.uniform(10.5, 11.5) * MM}


def _dome_profile(u, v, params: dict):
    """Return the heights and labels of a round dome (a cookie) of radius 31 mm.

    The dome rises 10.5 to 11.5 mm from a 2 mm base, and three faint waves (0.07 mm)
    cross its top.
    """
    radius = 31 * MM
    rho2 = (u * u + v * v) / (radius * radius)
    inside = rho2 < 1.0
    heights = 2 * MM + params["height"] * np.power(np.clip(1.0 - rho2, 0.0, 1.0), 0.7)
    for wavelength, angle, phase in params["waves"]:
        along = u * np.cos(angle) + v * np.sin(angle)
        heights += 0.07 * MM * np.cos(2 * np.pi * along / wavelength + phase)
    heights = np.where(inside, heights, 0.0)
    return heights, inside.astype(np.uint8)


def _cylinder_params(rng: np.random.Generator) -> dict:
    return {"groove_shift": rng.uniform(-0.5, 0.5) * MM}


def _cylinder_profile(u, v, params: dict):
    """Return the heights and labels of a cylinder lying on the plane along u.

    The cylinder has a radius of 11 mm and a length of 72 mm. The ends are rounded with
    a 2 mm fillet, and two 1.5 mm wide grooves run around it at a quarter of its
    length from each end.
    """
    radius = 11 * MM
    half_length = 36 * MM
    fillet = 2 * MM
    excess = np.clip(np.abs(u) - (half_length - fillet), 0.0, None)
    effective = radius - fillet + np.sqrt(np.clip(fillet**2 - excess**2, 0.0, None))
    for centre in (-18 * MM, 18 * MM):
        distance = np.abs(u - centre - params["groove_shift"]) / (0.75 * MM)
        effective = effective - 0.7 * MM * np.clip(1.0 - distance**2, 0.0, None)
    inside = (np.abs(u) < half_length) & (np.abs(v) < effective)
    heights = radius + np.sqrt(np.clip(effective**2 - v**2, 0.0, None))
    heights = np.where(inside, heights, 0.0)
    return heights, inside.astype(np.uint8)


def _ring_params(rng: np.random.Generator) -> dict:
    return {
        "treads": int(rng.integers(36, 43)),
        "tread_phase": rng.uniform(0, 2 * np.pi),
    }


def _ring_profile(u, v, params: dict):
    """Return the heights and labels of a flat-lying tyre with treads.

    The tyre is a torus of radii 27 and 9 mm, flattened to 15 mm. The treads are radial
    grooves 0.9 mm deep, and a 0.8 mm groove runs along the top.
    """
    major = 27 * MM
    minor = 9 * MM
    rho = np.hypot(u, v)
    across = (rho - major) / minor
    inside = np.abs(across) < 1.0
    heights = 0.85 * minor * (1.0 + np.sqrt(np.clip(1.0 - across**2, 0.0, None)))
    theta = np.arctan2(v, u)
    phase = np.mod(theta * params["treads"] / (2 * np.pi) + params["tread_phase"], 1.0)
    groove = np.clip((0.12 - np.abs(phase - 0.5)) / 0.03, 0.0, 1.0)
    groove *= np.abs(across) < 0.75
    heights -= 0.9 * MM * groove
    centre_groove = np.clip(1.0 - (across * minor / (0.6 * MM)) ** 2, 0.0, None)
    heights -= 0.8 * MM * centre_groove
    heights = np.where(inside, heights, 0.0)
    return heights, inside.astype(np.uint8)


def _gear_params(rng: np.random.Generator) -> dict:
    return {"teeth": 18, "tooth_height": rng.uniform(3.3, 3.7) * MM}


def _gear_profile(u, v, params: dict):
    """Return the heights and labels of a spur gear with a raised hub and a bore.

    The gear has 18 teeth, a tip radius of 34 mm and a thickness of 7 mm. The hub
    (label 2) of radius 11 mm rises to 11 mm with a chamfered edge, and the bore of
    radius 4 mm goes through to the plane.
    """
    root = 30.5 * MM
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    phase = np.abs(np.mod(theta * params["teeth"] / (2 * np.pi), 1.0) - 0.5)
    tooth = np.clip((0.30 - phase) / 0.10, 0.0, 1.0)
    outline = root + params["tooth_height"] * tooth
    heights = np.where(rho < outline, 7 * MM, 0.0)
    labels = (rho < outline).astype(np.uint8)
    hub = rho < 11 * MM
    heights = np.where(hub, 11 * MM - np.maximum(rho - 10.2 * MM, 0.0), heights)
    labels = np.where(hub, 2, labels).astype(np.uint8)
    bore = rho < 4 * MM
    heights = np.where(bore, 0.0, heights)
    labels = np.where(bore, 0, labels).astype(np.uint8)
    return heights, labels


def _panel_params(rng: np.random.Generator) -> dict:
    return {
        "wavelength": rng.uniform(12.5, 14.0) * MM,
        "phase": rng.uniform(0, 2 * np.pi),
    }


def _panel_profile(u, v, params: dict):
    """Return the heights and labels of a 78 x 62 mm corrugated panel.

    The panel has a 2.5 mm base with 2.2 mm waves, which fade out toward a flat rim.
    """
    depth = _rounded_box_depth(u, v, 39 * MM, 31 * MM, 5 * MM)
    wave = 0.5 * (1.0 - np.cos(2 * np.pi * u / params["wavelength"] + params["phase"]))
    fade = np.clip((depth - 2 * MM) / (3 * MM), 0.0, 1.0)
    heights = _chamfered(depth, 2.5 * MM, 0.6 * MM) + np.where(
        depth > 0, 2.2 * MM * wave * fade, 0.0
    )
    return heights, (depth > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ProceduralClass:
    """A procedural object class: its profile, size and look."""

    description: str
    profile: Callable
    draw_params: Callable[[np.random.Generator], dict]
    bound_radius: float
    rotationally_symmetric: bool
    colours: list
    texture_amplitude: list
    specular: list


PROCEDURAL_CLASSES: dict[str, ProceduralClass] = {
    "plate": ProceduralClass(
        "rounded 76 x 56 x 5 mm plate with six through holes",
        _plate_profile,
        _plate_params,
        48 * MM,
        False,
        [(0.25, 0.42, 0.72)],
        [0.05],
        [0.25],
    ),
    "dome": ProceduralClass(
        "round dome of radius 31 mm and height 13 mm (a cookie)",
        _dome_profile,
        _dome_params,
        32 * MM,
        True,
        [(0.78, 0.56, 0.30)],
        [0.18],
        [0.0],
    ),
    "cylinder": ProceduralClass(
        "cylinder of radius 11 mm and length 72 mm lying on the plane, two grooves",
        _cylinder_profile,
        _cylinder_params,
        38 * MM,
        False,
        [(0.70, 0.55, 0.36)],
        [0.12],
        [0.05],
    ),
    "ring": ProceduralClass(
        "flat-lying tyre of outer radius 36 mm with treads and a centre groove",
        _ring_profile,
        _ring_params,
        37 * MM,
        True,
        [(0.13, 0.13, 0.14)],
        [0.10],
        [0.10],
    ),
    "gear": ProceduralClass(
        "spur gear with 18 teeth, tip radius 34 mm, raised hub and bore",
        _gear_profile,
        _gear_params,
        35 * MM,
        True,
        [(0.60, 0.62, 0.65), (0.48, 0.50, 0.55)],
        [0.04, 0.04],
        [0.45, 0.45],
    ),
    "panel": ProceduralClass(
        "corrugated 78 x 62 mm panel with a flat rim",
        _panel_profile,
        _panel_params,
        50 * MM,
        False,
        [(0.85, 0.80, 0.64)],
        [0.05],
        [0.10],
    ),
}


def _grid_around(radius: float, step: float) -> tuple[np.ndarray, float]:
    """Return the cell-centre axis and first centre of a square grid.

    The grid covers ``[-radius, radius]`` in x and y, with at least one spare cell
    beyond ``radius`` on each side.
    """
    n = int(np.ceil(2 * radius / step)) + 3
    start = -0.5 * (n - 1) * step
    return start + step * np.arange(n), start


def _draw_placement(rng: np.random.Generator, symmetric: bool) -> dict:
    return {
        "scale": float(rng.uniform(0.97, 1.03)),
        "yaw": float(
            rng.uniform(0, 2 * np.pi) if symmetric else rng.uniform(-0.17, 0.17)
        ),
        "offset": rng.uniform(-3 * MM, 3 * MM, size=2),
    }


def build_procedural(name: str, rng: np.random.Generator, step: float) -> ObjectModel:
    """Draw one sample of procedural class ``name`` on a grid of cell size ``step``."""
    spec = PROCEDURAL_CLASSES[name]
    placement = _draw_placement(rng, spec.rotationally_symmetric)
    params = spec.draw_params(rng)
    appearance = _appearance(rng, spec.colours, spec.texture_amplitude, spec.specular)

    scale = placement["scale"]
    radius = spec.bound_radius * scale + np.abs(placement["offset"]).max() + 2 * step
    axis, start = _grid_around(radius, step)
    x = axis[None, :] - placement["offset"][0]
    y = axis[:, None] - placement["offset"][1]
    cos_yaw, sin_yaw = np.cos(placement["yaw"]), np.sin(placement["yaw"])
    u = (cos_yaw * x + sin_yaw * y) / scale
    v = (-sin_yaw * x + cos_yaw * y) / scale
    heights, labels = spec.profile(u, v, params)
    heights = np.where(labels > 0, heights * scale, 0.0)
    heights[[0, -1], :] = 0.0
    heights[:, [0, -1]] = 0.0
    labels = np.where(heights > 0, labels, 0).astype(np.uint8)

    grid = HeightGrid(np.ascontiguousarray(heights), labels, start, start, step)
    pose = {
        "scale": scale,
        "yaw_deg": float(np.degrees(placement["yaw"])),
        "offset_mm": [float(o / MM) for o in placement["offset"]],
    }
    return ObjectModel(grid, appearance, pose)


# --------------------------------------------------------------------------------------
# Objects from real scans.

# Largest horizontal extent of a scanned object after scaling (before the 3 % jitter).
SCAN_TARGET_EXTENT = 72 * MM

# Larger clouds are thinned with a fixed stride to about this many points before
# splatting. That keeps splatting fast and still leaves points about 0.3 mm apart on a
# 7 cm object, finer than the 0.43 mm pixels of a 256-pixel image.
_MAX_SCAN_POINTS = 60_000

# A scan thinner than this share of its width would lie flat on the background plane.
_MIN_THICKNESS = 0.02

# Colours of scan classes, assigned in the order of the classes.
SCAN_COLOURS = (
    (0.80, 0.76, 0.70),
    (0.45, 0.62, 0.78),
    (0.72, 0.52, 0.36),
    (0.52, 0.70, 0.48),
    (0.76, 0.70, 0.40),
    (0.66, 0.50, 0.66),
)


@dataclasses.dataclass(frozen=True)
class CanonicalScan:
    """A scanned cloud in its resting frame: thinnest principal axis up, unit extent.

    ``points`` are centred on their centroid, with the largest horizontal extent (the
    2nd to 98th percentile along the first principal axis) scaled to 1. ``spacing`` is
    the median distance between neighbouring points in the same unit.
    """

    points: np.ndarray
    spacing: float


def canonical_scan(points: np.ndarray) -> CanonicalScan:
    """Put a scanned cloud in its resting pose: the thinnest principal axis points up.

    An object resting on a table lies on its largest face, so its thinnest principal
    axis is vertical. The up direction points toward the coordinate origin when the
    origin lies clearly on one side of the cloud, because sensor clouds (PCL, Kinect)
    are stored in the sensor frame and the sensor saw that side. Otherwise the sign
    is fixed so that the component of largest magnitude is positive.

    Raises
    ------
    ValueError
        If the points lie on one line or at one point, or are thinner than 2 % of
        their width (after scaling to 72 mm, they would rise less than 1.5 mm).
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) > _MAX_SCAN_POINTS:
        stride = int(np.ceil(len(points) / _MAX_SCAN_POINTS))
        points = points[::stride]
    centroid = points.mean(axis=0)
    centred = points - centroid
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)
    first = eigenvectors[:, 2]
    up = eigenvectors[:, 0]
    toward_origin = -centroid @ up
    if abs(toward_origin) > 0.1 * np.linalg.norm(centroid):
        up = up * np.sign(toward_origin)
    elif up[np.argmax(np.abs(up))] < 0:
        up = -up
    first = first - (first @ up) * up
    first /= np.linalg.norm(first)
    frame = np.stack([first, np.cross(up, first), up], axis=1)
    local = centred @ frame
    low, high = np.percentile(local[:, 0], [2, 98])
    extent = max(high - low, np.ptp(local[:, :2], axis=0).max() * 0.5)
    second = local[:, 1].max() - local[:, 1].min()
    if not (extent > 0 and second > 1e-9 * extent):
        raise ValueError(
            "points must span a surface, but they lie on one line or at one point. "
            "Pass the points of a scanned object."
        )
    low, high = np.percentile(local[:, 2], [2, 98])
    thickness = (high - low) / extent
    if thickness < _MIN_THICKNESS:
        raise ValueError(
            f"points are nearly flat: their thickness is {100 * thickness:.2g} % of "
            f"their width, below {100 * _MIN_THICKNESS:g} %, so the object would "
            "not rise above the background plane. Pass the points of a solid object."
        )
    local /= extent
    tree = spatial.cKDTree(local[:, :2])
    probe = local[:: max(1, len(local) // 4000), :2]
    distances, _ = tree.query(probe, k=2)
    spacing = float(np.median(distances[:, 1]))
    return CanonicalScan(np.ascontiguousarray(local), max(spacing, 1e-6))


def _rotation(tilt: float, tilt_axis: float, yaw: float) -> np.ndarray:
    """Return a rotation: yaw about the up axis, then a tilt about a horizontal axis."""
    cos_y, sin_y = np.cos(yaw), np.sin(yaw)
    yaw_matrix = np.array([[cos_y, -sin_y, 0.0], [sin_y, cos_y, 0.0], [0.0, 0.0, 1.0]])
    axis = np.array([np.cos(tilt_axis), np.sin(tilt_axis), 0.0])
    cross = np.array(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]
    )
    tilt_matrix = np.eye(3) + np.sin(tilt) * cross + (1 - np.cos(tilt)) * cross @ cross
    return tilt_matrix @ yaw_matrix


def _disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius + radius


def _splat_heights(xy: np.ndarray, heights: np.ndarray, cell: float, radius: float):
    """Splat points into a coarse grid of upper-envelope heights and fill small holes.

    Returns ``(grid, covered, start)``: heights on a square grid of cell size
    ``cell`` whose first cell centre is at ``(start, start)``, and the covered cells.
    """
    n = int(np.ceil(2 * radius / cell)) + 7
    start = -0.5 * (n - 1) * cell
    col = np.clip(np.rint((xy[:, 0] - start) / cell).astype(np.intp), 0, n - 1)
    row = np.clip(np.rint((xy[:, 1] - start) / cell).astype(np.intp), 0, n - 1)
    top = np.full(n * n, -np.inf)
    np.maximum.at(top, row * n + col, heights)
    top = top.reshape(n, n)

    # The upper envelope of the points within one cell of each cell: the splat radius.
    envelope = ndimage.grey_dilation(
        np.where(np.isfinite(top), top, -1.0), footprint=_disk(1)
    )
    covered = envelope > -0.5
    closed = ndimage.binary_closing(covered, structure=_disk(1), iterations=2) | covered
    holes = ndimage.binary_fill_holes(closed) & ~closed
    hole_labels, n_holes = ndimage.label(holes)
    if n_holes:
        sizes = ndimage.sum_labels(holes, hole_labels, index=np.arange(1, n_holes + 1))
        small = np.concatenate([[False], sizes <= 16])
        closed |= small[hole_labels]

    # Normalized convolution: smooth the measured heights and fill the closed holes.
    measured = np.where(covered, envelope, 0.0)
    weight = ndimage.gaussian_filter(covered.astype(np.float64), sigma=0.8)
    smooth = ndimage.gaussian_filter(measured, sigma=0.8)
    grid = np.where(closed, smooth / np.maximum(weight, 1e-9), 0.0)
    return np.maximum(grid, 0.0), closed, start


def build_scan(
    scan: CanonicalScan, rng: np.random.Generator, step: float, colour_index: int
) -> ObjectModel:
    """Draw one sample of a scanned object: scale, rotation, offset and height grid."""
    scale = SCAN_TARGET_EXTENT * float(rng.uniform(0.97, 1.03))
    yaw = float(rng.uniform(-0.26, 0.26))
    tilt = float(rng.uniform(0.0, 0.09))
    tilt_axis = float(rng.uniform(0, 2 * np.pi))
    offset = rng.uniform(-3 * MM, 3 * MM, size=2)
    colour = SCAN_COLOURS[colour_index % len(SCAN_COLOURS)]
    appearance = _appearance(rng, [colour], [0.08], [0.1])

    points = scan.points @ _rotation(tilt, tilt_axis, yaw).T * scale
    heights = points[:, 2] - np.percentile(points[:, 2], 0.5)
    xy = points[:, :2] + offset
    radius = np.abs(xy).max() + 2 * step
    cell = max(step, 1.2 * scan.spacing * scale)
    coarse, covered, coarse_start = _splat_heights(xy, heights, cell, radius)

    # Resample the coarse grid on the fine grid: cubic inside, and the outline from
    # the smoothed coverage, so sparse scans do not get staircase silhouettes.
    axis, start = _grid_around(radius + 3 * cell, step)
    index = (axis - coarse_start) / cell
    rows, cols = np.meshgrid(index, index, indexing="ij")
    fine = ndimage.map_coordinates(coarse, [rows, cols], order=3, mode="nearest")
    coverage = ndimage.gaussian_filter(covered.astype(np.float64), sigma=1.2)
    inside = ndimage.map_coordinates(coverage, [rows, cols], order=1) > 0.5
    fine = np.where(inside, np.clip(fine, 0.0, coarse.max()), 0.0)
    fine[[0, -1], :] = 0.0
    fine[:, [0, -1]] = 0.0
    labels = (fine > 0).astype(np.uint8)
    grid = HeightGrid(np.ascontiguousarray(fine), labels, start, start, step)
    pose = {
        "scale_m": scale,
        "yaw_deg": float(np.degrees(yaw)),
        "tilt_deg": float(np.degrees(tilt)),
        "offset_mm": [float(o / MM) for o in offset],
    }
    return ObjectModel(grid, appearance, pose)
