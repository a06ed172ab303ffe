"""Camera, ray casting and the sensor model of the demo dataset.

Coordinates are camera coordinates in metres, as in MVTec 3D-AD and PCL organized
scans: a pinhole camera at the origin looks along +z, with x to the right (columns)
and y down (rows). The background plane lies about 0.4 m away, tilted by 1 to 4
degrees. A structured-light projector sits 8 cm to the right of the camera. Points
that the projector cannot light (shadows) or that either device sees at a grazing
angle are not measured, as with real structured-light sensors.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from .shapes import MM, HeightGrid, ObjectModel

WORKING_DISTANCE = 0.40
FIELD_OF_VIEW = 0.11
PROJECTOR_BASELINE = 0.08

# Ray marching descends this much height per step before the crossing is refined by
# bisection. Over one step a view ray moves at most about 0.2 mm sideways (a light ray
# toward the projector 0.35 mm), so only features thinner than that could be skipped.
_MARCH_STEP = 1.0 * MM
_BISECTIONS = 9

# A shadow ray is blocked where the surface is higher than the ray by more than this.
_SHADOW_TOLERANCE = 0.01 * MM

# Depth noise: standard deviation at normal incidence and 0.4 m, growing as
# 1 / cos(incidence) (capped at 5x) and with the squared distance.
DEPTH_NOISE = 0.1 * MM
_NOISE_MAX_FACTOR = 5.0

# Incidence angles (degrees) between which the chance of a missing point rises from
# 0 to 1, for the camera and the projector alike.
GRAZING_START_DEG = 65.0
GRAZING_END_DEG = 82.0

# Random dropouts: the share of isolated missing pixels, and the maximum number of
# small missing blobs per image.
_ISOLATED_DROPOUT_RATE = 3e-4
_MAX_DROPOUT_BLOBS = 3

# Rays are processed in blocks of this many to bound the memory of the march.
_BLOCK = 65536


@dataclasses.dataclass(frozen=True)
class Camera:
    """Square pinhole camera of ``size`` pixels; ``focal`` and centre in pixels."""

    size: int
    focal: float
    centre: float

    @classmethod
    def for_size(cls, size: int) -> Camera:
        """Return the camera whose image is 0.11 m wide at 0.4 m."""
        return cls(size, size * WORKING_DISTANCE / FIELD_OF_VIEW, (size - 1) / 2.0)

    @property
    def pixel_pitch(self) -> float:
        """Width in metres of one pixel at the working distance."""
        return WORKING_DISTANCE / self.focal

    def ray_directions(self) -> np.ndarray:
        """Return ``(size * size, 3)`` ray directions with z = 1, row-major.

        The array is cached per size and read-only.
        """
        return _ray_directions(self.size, self.focal, self.centre)


@functools.lru_cache(maxsize=4)
def _ray_directions(size: int, focal: float, centre: float) -> np.ndarray:
    axis = (np.arange(size) - centre) / focal
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    directions = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    directions.flags.writeable = False
    return directions


@dataclasses.dataclass(frozen=True)
class PlanePose:
    """Pose of the background plane: its frame's axes as columns and its origin."""

    rotation: np.ndarray
    origin: np.ndarray

    @property
    def tilt_deg(self) -> float:
        """Angle in degrees between the plane normal and the optical axis."""
        return float(np.degrees(np.arccos(-self.rotation[2, 2])))


def draw_plane_pose(rng: np.random.Generator) -> PlanePose:
    """Draw a plane at 0.4 m (within 1 %) tilted by 1 to 4 degrees in any direction."""
    distance = WORKING_DISTANCE * rng.uniform(0.99, 1.01)
    tilt = np.radians(rng.uniform(1.0, 4.0))
    azimuth = rng.uniform(0, 2 * np.pi)
    normal = np.array(
        [np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt)]
    )
    x_axis = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(normal, x_axis)
    rotation = np.stack([x_axis, y_axis, normal], axis=1)
    return PlanePose(rotation, np.array([0.0, 0.0, distance]))


@dataclasses.dataclass(frozen=True)
class RayHits:
    """Noise-free result of casting every pixel ray at the scene.

    ``depth`` is the z of the hit in camera coordinates (rays have z = 1); ``x``,
    ``y`` and ``height`` are the hit in the plane frame; ``normal`` is the surface
    normal in camera coordinates; ``lit`` is False where the projector's light is
    blocked; ``cos_camera`` and ``cos_projector`` are the cosines of the incidence
    angles. All arrays are flat, one entry per pixel.
    """

    depth: np.ndarray
    x: np.ndarray
    y: np.ndarray
    height: np.ndarray
    labels: np.ndarray
    normal: np.ndarray
    lit: np.ndarray
    cos_camera: np.ndarray
    cos_projector: np.ndarray

    @property
    def on_object(self) -> np.ndarray:
        """Where the ray hits the object rather than the background plane."""
        return self.labels > 0

    def copy(self) -> RayHits:
        """Return a deep copy, whose arrays can be overwritten."""
        return RayHits(
            **{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)}
        )


def _rotate(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Return ``vectors @ matrix`` for ``(n, 3)`` vectors, without calling BLAS.

    NumPy hands this product to BLAS, whose threads made it about 20 times slower than
    three multiply-adds on a loaded two-core machine.
    """
    return (
        vectors[:, 0:1] * matrix[0]
        + vectors[:, 1:2] * matrix[1]
        + vectors[:, 2:3] * matrix[2]
    )


def _row_norm(vectors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


def _segment_overlaps(start: np.ndarray, end: np.ndarray, bounds) -> np.ndarray:
    """Return where the bounding box of each 2-D segment overlaps ``bounds``."""
    x_min, x_max, y_min, y_max = bounds
    low = np.minimum(start, end)
    high = np.maximum(start, end)
    return (
        (high[:, 0] >= x_min)
        & (low[:, 0] <= x_max)
        & (high[:, 1] >= y_min)
        & (low[:, 1] <= y_max)
    )


class _HeightBound:
    """Upper bounds of a height grid over blocks of about 1 mm, for skipping rays.

    ``max_along`` bounds the bilinear height along segments by sampling the block
    maxima once per block length. A point between two samples lies within half a
    block of one of them, and the four cells that its bilinear lookup reads lie in
    that sample's block or a neighbouring one. The maxima are dilated by two blocks,
    which covers both.
    """

    def __init__(self, grid: HeightGrid):
        self.grid = grid
        self.block = max(2, int(np.ceil(1.0 * MM / grid.step)))
        ny, nx = grid.shape
        by = -(-ny // self.block)
        bx = -(-nx // self.block)
        padded = np.zeros((by * self.block, bx * self.block))
        padded[:ny, :nx] = grid.heights
        blocks = padded.reshape(by, self.block, bx, self.block).max(axis=(1, 3))
        self.maxima = ndimage.maximum_filter(blocks, size=5, mode="nearest")

    def max_along(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Return an upper bound of the height along each segment ``start -> end``."""
        grid = self.grid
        ceiling = np.zeros(len(start))
        near = np.flatnonzero(_segment_overlaps(start, end, grid.bounds))
        if not len(near):
            return ceiling
        start, end = start[near], end[near]
        block_length = self.block * grid.step
        n_samples = int(np.ceil(_row_norm(end - start).max() / block_length)) + 1
        share = np.linspace(0.0, 1.0, max(n_samples, 2))
        by, bx = self.maxima.shape
        # Truncation equals floor here, because negative indices are clipped to 0.
        col = (
            start[:, 0:1] - grid.x0 + share * (end[:, 0:1] - start[:, 0:1])
        ) / block_length
        col = np.clip(col.astype(np.intp), 0, bx - 1)
        row = (
            start[:, 1:2] - grid.y0 + share * (end[:, 1:2] - start[:, 1:2])
        ) / block_length
        row = np.clip(row.astype(np.intp), 0, by - 1)
        row *= bx
        row += col
        ceiling[near] = self.maxima.ravel()[row].max(axis=1)
        return ceiling


@dataclasses.dataclass(frozen=True)
class _Rays:
    """Pixel rays of one capture in the plane frame, shared by every cast."""

    directions: np.ndarray
    plane_directions: np.ndarray
    camera: np.ndarray
    projector: np.ndarray
    projector_camera: np.ndarray

    @classmethod
    def of(cls, camera: Camera, pose: PlanePose) -> _Rays:
        directions = camera.ray_directions()
        projector_camera = np.array([PROJECTOR_BASELINE, 0.0, 0.0])
        return cls(
            directions=directions,
            plane_directions=_rotate(directions, pose.rotation),
            camera=-(pose.origin @ pose.rotation),
            projector=(projector_camera - pose.origin) @ pose.rotation,
            projector_camera=projector_camera,
        )

    def segment(self, index: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
        """Return where rays ``index`` pass heights ``top`` and 0, in plane x and y."""
        direction = self.plane_directions[index]
        to_top = (top - self.camera[2]) / direction[:, 2]
        to_plane = -self.camera[2] / direction[:, 2]
        start = self.camera[:2] + to_top[:, None] * direction[:, :2]
        end = self.camera[:2] + to_plane[:, None] * direction[:, :2]
        return start, end


def _march(
    grid: HeightGrid, origin: np.ndarray, direction: np.ndarray, top: np.ndarray
):
    """Find the first crossing of rays with the height field, descending from ``top``.

    Each ray is ``origin + t * direction`` in the plane frame, with one shared
    ``origin`` and ``direction[:, 2] < 0``; ``top`` is a per-ray height above the
    surface. Returns ``t`` of the first crossing. The levels end at height 0, where
    the surface is never below the ray, so every ray has a crossing.
    """
    ox, oy, oz = origin
    dx, dy, dz = direction[:, 0], direction[:, 1], direction[:, 2]
    n = len(direction)
    lower = np.empty(n)
    upper = np.empty(n)
    pending = np.arange(n)
    pdx, pdy, pdz, ptop = dx, dy, dz, top
    previous = (top - oz) / dz
    k = 0
    while len(pending):
        k += 1
        level = np.maximum(ptop - k * _MARCH_STEP, 0.0)
        t = (level - oz) / pdz
        crossed = level <= grid.sample(ox + t * pdx, oy + t * pdy)
        lower[pending[crossed]] = previous[crossed]
        upper[pending[crossed]] = t[crossed]
        keep = ~crossed
        pending = pending[keep]
        previous = t[keep]
        pdx, pdy, pdz, ptop = pdx[keep], pdy[keep], pdz[keep], ptop[keep]

    def gap(t):
        return oz + t * dz - grid.sample(ox + t * dx, oy + t * dy)

    for _ in range(_BISECTIONS):
        middle = 0.5 * (lower + upper)
        above = gap(middle) > 0
        lower = np.where(above, middle, lower)
        upper = np.where(above, upper, middle)

    # One secant step inside the final bracket; it stays inside the bracket.
    gap_lower = gap(lower)
    gap_upper = gap(upper)
    span = gap_lower - gap_upper
    share = np.where(span > 0, gap_lower / np.where(span > 0, span, 1.0), 0.5)
    return lower + np.clip(share, 0.0, 1.0) * (upper - lower)


def _shadowed(
    grid: HeightGrid, bound: _HeightBound, points: np.ndarray, light: np.ndarray
):
    """Return where the segment from each plane-frame point to ``light`` is blocked.

    The march climbs from the point toward the light in height steps of 1 mm, up to
    the highest the surface can be along the way.
    """
    blocked = np.zeros(len(points), dtype=bool)
    toward = light[None, :] - points
    top = float(grid.heights.max())
    rise = np.maximum(top - points[:, 2], 0.0)
    end = points[:, :2] + toward[:, :2] * (rise / toward[:, 2])[:, None]
    ceiling = bound.max_along(points[:, :2], end)
    pending = np.flatnonzero(ceiling > points[:, 2] + _SHADOW_TOLERANCE)
    px, py, pz = points[pending, 0], points[pending, 1], points[pending, 2]
    wx, wy, wz = toward[pending, 0], toward[pending, 1], toward[pending, 2]
    remaining = ceiling[pending] - pz
    k = 0
    while len(pending):
        k += 1
        s = np.minimum(k * _MARCH_STEP, remaining) / wz
        hit = grid.sample(px + s * wx, py + s * wy) > pz + s * wz + _SHADOW_TOLERANCE
        blocked[pending[hit]] = True
        keep = ~hit & (remaining > k * _MARCH_STEP)
        pending = pending[keep]
        px, py, pz = px[keep], py[keep], pz[keep]
        wx, wy, wz = wx[keep], wy[keep], wz[keep]
        remaining = remaining[keep]
    return blocked


def _expanded(bounds, margin: float) -> tuple[float, float, float, float]:
    x_min, x_max, y_min, y_max = bounds
    return (x_min - margin, x_max + margin, y_min - margin, y_max + margin)


def _hit_rays(grid, bound, rays: _Rays, index, hits: RayHits) -> None:
    """Cast rays ``index`` and write depth, position, label and normal into ``hits``."""
    top = float(grid.heights.max()) + 0.5 * MM
    start, end = rays.segment(index, top)
    ceiling = bound.max_along(start, end)
    direction = rays.plane_directions[index]
    t = -rays.camera[2] / direction[:, 2]
    over_object = np.flatnonzero(ceiling > 0)
    t[over_object] = _march(
        grid, rays.camera, direction[over_object], ceiling[over_object] + 0.5 * MM
    )
    point = rays.camera + t[:, None] * direction
    hits.depth[index] = t
    hits.x[index] = point[:, 0]
    hits.y[index] = point[:, 1]
    hits.height[index] = point[:, 2]
    hits.labels[index] = grid.label_at(point[:, 0], point[:, 1])


def _surface_normals(grid: HeightGrid, pose: PlanePose, hits: RayHits, index) -> None:
    slope_y, slope_x = np.gradient(grid.heights, grid.step)
    x, y = hits.x[index], hits.y[index]
    normal = np.stack(
        [-grid.sample(x, y, slope_x), -grid.sample(x, y, slope_y), np.ones(len(x))],
        axis=1,
    )
    normal /= _row_norm(normal)[:, None]
    hits.normal[index] = _rotate(normal, pose.rotation.T)


def _light_rays(grid, bound, rays: _Rays, index, hits: RayHits) -> None:
    """Write the shadow flags and incidence cosines of rays ``index`` into ``hits``."""
    point_plane = np.stack([hits.x[index], hits.y[index], hits.height[index]], axis=1)
    hits.lit[index] = ~_shadowed(grid, bound, point_plane, rays.projector)
    point = hits.depth[index, None] * rays.directions[index]
    normal = hits.normal[index]
    to_camera = -point / _row_norm(point)[:, None]
    to_projector = rays.projector_camera - point
    to_projector /= _row_norm(to_projector)[:, None]
    hits.cos_camera[index] = np.einsum("ij,ij->i", normal, to_camera)
    hits.cos_projector[index] = np.einsum("ij,ij->i", normal, to_projector)


def cast_rays(
    grid: HeightGrid,
    camera: Camera,
    pose: PlanePose,
    *,
    base: RayHits | None = None,
    changed_bounds: tuple[float, float, float, float] | None = None,
) -> RayHits:
    """Cast one ray per pixel at the plane and the height field, and light the hits.

    ``base`` may give the hits of the same scene before a local change, and
    ``changed_bounds`` the plane-frame box ``(x_min, x_max, y_min, y_max)`` outside
    which ``grid`` equals the grid of ``base``. Then only the rays whose view or light
    path passes over that box are cast again, and the others are copied from ``base``.
    """
    rays = _Rays.of(camera, pose)
    bound = _HeightBound(grid)
    n = len(rays.directions)
    if base is None:
        hits = RayHits(
            depth=np.empty(n),
            x=np.empty(n),
            y=np.empty(n),
            height=np.empty(n),
            labels=np.empty(n, dtype=np.uint8),
            normal=np.empty((n, 3)),
            lit=np.empty(n, dtype=bool),
            cos_camera=np.empty(n),
            cos_projector=np.empty(n),
        )
        viewed = np.arange(n)
        lit = viewed
    else:
        # Bilinear lookups and the slope grid read one cell beyond a point, so a ray
        # that keeps two cells away from the box never sees the change.
        box = _expanded(changed_bounds, 2 * grid.step)
        hits = base.copy()
        top = float(grid.heights.max()) + 0.5 * MM
        start, end = rays.segment(np.arange(n), top)
        viewed = np.flatnonzero(_segment_overlaps(start, end, box))

    for first in range(0, len(viewed), _BLOCK):
        block = viewed[first : first + _BLOCK]
        _hit_rays(grid, bound, rays, block, hits)
    _surface_normals(grid, pose, hits, viewed)

    if base is not None:
        point = np.stack([hits.x, hits.y, hits.height], axis=1)
        toward = rays.projector[None, :] - point
        rise = np.maximum(top - point[:, 2], 0.0)
        end = point[:, :2] + toward[:, :2] * (rise / toward[:, 2])[:, None]
        passes = _segment_overlaps(point[:, :2], end, box)
        passes[viewed] = True
        lit = np.flatnonzero(passes)
    for first in range(0, len(lit), _BLOCK):
        block = lit[first : first + _BLOCK]
        _light_rays(grid, bound, rays, block, hits)
    return hits


@dataclasses.dataclass(frozen=True)
class SensorFields:
    """Random fields of one capture, flat per pixel.

    They are drawn once per sample, so a sample and its defect-free twin share them:
    uniform numbers for grazing losses, unit depth noise, random dropouts and rgb
    noise in grey levels.
    """

    grazing_draw: np.ndarray
    depth_noise: np.ndarray
    dropouts: np.ndarray
    rgb_noise: np.ndarray


def draw_sensor_fields(rng: np.random.Generator, size: int) -> SensorFields:
    """Draw the random fields of one ``size x size`` capture.

    Random dropouts are isolated pixels (0.03 %) and up to three discs 1 to 2.5 pixels
    in radius at 256 pixels, scaled with the image size.
    """
    grazing_draw = rng.random(size * size)
    depth_noise = rng.standard_normal(size * size)
    dropouts = rng.random((size, size)) < _ISOLATED_DROPOUT_RATE
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(0, _MAX_DROPOUT_BLOBS + 1))):
        centre = rng.uniform(0, size, size=2)
        radius = rng.uniform(1.0, 2.5) * max(size / 256, 0.5)
        dropouts |= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    rgb_noise = rng.normal(0.0, 1.5, size=(size * size, 3))
    return SensorFields(grazing_draw, depth_noise, dropouts.ravel(), rgb_noise)


def _smoothstep(value: np.ndarray, low: float, high: float) -> np.ndarray:
    s = np.clip((value - low) / (high - low), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def measurable(hits: RayHits, fields: SensorFields) -> np.ndarray:
    """Return where the sensor measures a point, before random dropouts.

    A point is lost when the projector cannot light it, when it faces away from the
    camera or the projector, or by chance at grazing angles. The chance rises smoothly
    from 0 at 65 to 1 at 82 degrees, where the angle is the larger of the camera's and
    the projector's angles of incidence.
    """
    cosine = np.minimum(hits.cos_camera, hits.cos_projector)
    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    chance = _smoothstep(angle, GRAZING_START_DEG, GRAZING_END_DEG)
    return hits.lit & (cosine > 0) & (fields.grazing_draw >= chance)


def measure_xyz(hits: RayHits, camera: Camera, fields: SensorFields) -> np.ndarray:
    """Return the organized ``(size, size, 3)`` float32 cloud, NaN where not measured.

    Depth noise acts along the view ray.
    """
    factor = np.minimum(1.0 / np.maximum(hits.cos_camera, 1e-6), _NOISE_MAX_FACTOR)
    sigma = DEPTH_NOISE * factor * (hits.depth / WORKING_DISTANCE) ** 2
    depth = hits.depth + sigma * fields.depth_noise
    xyz = depth[:, None] * camera.ray_directions()
    valid = measurable(hits, fields) & ~fields.dropouts
    xyz[~valid] = np.nan
    return xyz.reshape(camera.size, camera.size, 3).astype(np.float32)


def shade_rgb(
    hits: RayHits,
    model: ObjectModel,
    camera: Camera,
    fields: SensorFields,
    paint: np.ndarray | None = None,
    paint_colour: np.ndarray | None = None,
) -> np.ndarray:
    """Render the colour image: Lambert and Blinn-Phong shading lit from the projector.

    ``paint`` is a per-pixel weight in [0, 1] that blends ``paint_colour`` into the
    albedo (foreign material of a contamination defect).
    """
    albedo = model.appearance.albedo(hits.x, hits.y, hits.labels)
    if paint is not None:
        albedo = (
            albedo * (1.0 - paint[:, None]) + paint[:, None] * paint_colour[None, :]
        )
    points = hits.depth[:, None] * camera.ray_directions()
    to_light = np.array([PROJECTOR_BASELINE, 0.0, 0.0]) - points
    to_light /= _row_norm(to_light)[:, None]
    to_eye = -points / _row_norm(points)[:, None]
    diffuse = (
        np.clip(np.einsum("ij,ij->i", hits.normal, to_light), 0.0, None) * hits.lit
    )
    half = to_light + to_eye
    half /= _row_norm(half)[:, None]
    highlight = np.clip(np.einsum("ij,ij->i", hits.normal, half), 0.0, None) ** 40
    specular = model.appearance.specular[hits.labels] * highlight * hits.lit
    intensity = albedo * (0.3 + 0.7 * diffuse)[:, None] + specular[:, None]
    rgb = 255.0 * np.clip(intensity, 0.0, 1.0) + fields.rgb_noise
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return rgb.reshape(camera.size, camera.size, 3)
