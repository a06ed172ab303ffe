"""One demo sample in memory: organized cloud, colour image and defect mask."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validation import check_int, check_points, check_rng
from .defects import DEFECT_TYPES, MASK_THRESHOLD, Defect, place_defect
from .render import (
    Camera,
    cast_rays,
    draw_plane_pose,
    draw_sensor_fields,
    measurable,
    measure_xyz,
    shade_rgb,
)
from .shapes import (
    PROCEDURAL_CLASSES,
    ObjectModel,
    build_procedural,
    build_scan,
    canonical_scan,
    grid_step_for,
)

DEMO_CLASSES = tuple(PROCEDURAL_CLASSES)
MIN_SIZE = 32


@dataclasses.dataclass(frozen=True)
class DemoSample:
    """A rendered demo sample.

    Attributes
    ----------
    xyz : ndarray of shape (size, size, 3), float32
        Organized cloud in camera coordinates (metres), NaN where no point was
        measured.
    rgb : ndarray of shape (size, size, 3), uint8
        Colour image of the same view.
    depth : ndarray of shape (size, size), float64
        Noise-free depth (camera z in metres) of the surface hit by each pixel's ray,
        also where the sensor measured nothing.
    gt : ndarray of shape (size, size), bool
        Defect mask: the pixels whose noise-free depth the defect moved by more than
        ``MASK_THRESHOLD`` (0.1 mm), or whose measurability it changed. All False for
        a good sample and for a twin rendered with ``apply_defect=False``.
    object_mask : ndarray of shape (size, size), bool
        Pixels whose ray hits the object (not the background plane), with or without
        the defect.
    defect_type : str or None
        The defect placed on the sample, None for a good sample.
    defect_parameters : dict
        Size, position and depth of the defect in millimetres (empty when good).
    pose : dict
        The drawn plane tilt, object scale, rotation and offset.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    gt: np.ndarray
    object_mask: np.ndarray
    defect_type: str | None
    defect_parameters: dict
    pose: dict


def check_defect_type(defect_type: Any, name: str = "defect_type") -> str | None:
    """Check one defect type name (or None) against ``DEFECT_TYPES``."""
    if defect_type is None or defect_type == "good":
        return None
    if not isinstance(defect_type, str):
        raise TypeError(
            f"{name} must be a str or None, but got {type(defect_type).__name__}."
        )
    if defect_type not in DEFECT_TYPES:
        raise ValueError(
            f"Unknown {name} {defect_type!r}. Known defect types: "
            f"{', '.join(DEFECT_TYPES)}."
        )
    return defect_type


def check_size(size: Any) -> int:
    """Check the image size: an int of at least 32 pixels."""
    size = check_int(size, "size")
    if size < MIN_SIZE:
        raise ValueError(
            f"size must be at least {MIN_SIZE} pixels, but got {size}. Smaller images "
            "cannot resolve the objects' walls and defects."
        )
    return size


def _render(
    build: Callable[[np.random.Generator, float], ObjectModel],
    defect_type: str | None,
    size: int,
    rng: np.random.Generator,
    apply_defect: bool,
) -> DemoSample:
    """Render one sample, drawing everything from ``rng`` in a fixed order.

    The order is plane pose, object, defect, sensor fields. A twin rendered with
    ``apply_defect=False`` therefore shares the pose, object, defect placement and
    every random field of its defective sample.
    """
    camera = Camera.for_size(size)
    pose = draw_plane_pose(rng)
    model = build(rng, grid_step_for(camera.pixel_pitch))
    defect: Defect | None = None
    if defect_type is not None:
        defect = place_defect(
            defect_type,
            model.grid,
            rng,
            camera.pixel_pitch,
            size * size,
            model.appearance.colours[1],
        )
    fields = draw_sensor_fields(rng, size)

    clean = cast_rays(model.grid, camera, pose)
    hits = clean
    gt = np.zeros(size * size, dtype=bool)
    paint = None
    if defect is not None and apply_defect:
        defective_grid = defect.apply(model.grid)
        hits = cast_rays(
            defective_grid,
            camera,
            pose,
            base=clean,
            changed_bounds=defect.bounds(model.grid),
        )
        gt = np.abs(hits.depth - clean.depth) > MASK_THRESHOLD
        gt |= measurable(hits, fields) != measurable(clean, fields)
        if defect.paint is not None:
            paint = defect.paint_at(defective_grid, hits.x, hits.y)

    xyz = measure_xyz(hits, camera, fields)
    paint_colour = defect.paint_colour if defect is not None else None
    rgb = shade_rgb(hits, model, camera, fields, paint, paint_colour)
    object_mask = (clean.on_object | hits.on_object).reshape(size, size)
    return DemoSample(
        xyz=xyz,
        rgb=rgb,
        depth=hits.depth.reshape(size, size),
        gt=gt.reshape(size, size),
        object_mask=object_mask,
        defect_type=defect_type,
        defect_parameters=dict(defect.parameters) if defect is not None else {},
        pose={"plane_tilt_deg": round(pose.tilt_deg, 4), **model.pose},
    )


def render_demo_sample(
    class_name: str,
    *,
    defect_type: str | None = None,
    size: int = 256,
    seed: Any = 0,
    apply_defect: bool = True,
) -> DemoSample:
    """Render one sample of a procedural demo class.

    Parameters
    ----------
    class_name : str
        One of ``DEMO_CLASSES``.
    defect_type : str or None, default None
        One of ``DEFECT_TYPES``, or None (or ``"good"``) for a defect-free sample.
    size : int, default 256
        Image height and width in pixels, at least 32.
    seed : int or numpy.random.Generator, default 0
        The same seed gives the same sample, bit for bit.
    apply_defect : bool, default True
        With False, the defect is placed but not applied: the result is the
        defect-free twin of the defective sample, with the same pose, noise and
        dropouts, so the two differ only where the defect changed the geometry.

    Returns
    -------
    DemoSample

    Raises
    ------
    ValueError
        If ``class_name`` or ``defect_type`` is unknown, or ``size`` is below 32.

    Examples
    --------
    >>> from zal3d_core.demo import render_demo_sample
    >>> sample = render_demo_sample("gear", defect_type="dent", size=64, seed=1)
    >>> sample.xyz.shape, sample.rgb.dtype, bool(sample.gt.any())
    ((64, 64, 3), dtype('uint8'), True)
    """
    if not isinstance(class_name, str) or class_name not in PROCEDURAL_CLASSES:
        raise ValueError(
            f"Unknown class_name {class_name!r}. Known demo classes: "
            f"{', '.join(DEMO_CLASSES)}."
        )
    defect_type = check_defect_type(defect_type)
    size = check_size(size)
    rng = check_rng(seed)

    def build(generator, step):
        return build_procedural(class_name, generator, step)

    return _render(build, defect_type, size, rng, bool(apply_defect))


def render_scan_sample(
    points: Any,
    *,
    defect_type: str | None = None,
    size: int = 256,
    seed: Any = 0,
    apply_defect: bool = True,
    colour_index: int = 0,
) -> DemoSample:
    """Render one sample whose object is a real scanned cloud.

    The cloud is put in its resting pose (thinnest principal axis up), scaled to a
    largest horizontal extent of 72 mm (within 3 %), rotated by a few degrees, and
    splatted into a height grid whose small holes are filled. Defects and the sensor
    model are those of :func:`render_demo_sample`.

    Parameters
    ----------
    points : array-like of shape (n_points, 3)
        The scanned object, in any unit. At least 50 finite points.
    defect_type, size, seed, apply_defect
        As in :func:`render_demo_sample`.
    colour_index : int, default 0
        Index into the scan colour palette.

    Raises
    ------
    ValueError
        If ``points`` is not an (N, 3) array of at least 50 finite points, or as in
        :func:`render_demo_sample`.
    """
    points = check_points(points, "points", min_points=50)
    defect_type = check_defect_type(defect_type)
    size = check_size(size)
    colour_index = check_int(colour_index, "colour_index", minimum=0)
    rng = check_rng(seed)
    scan = canonical_scan(points)

    def build(generator, step):
        return build_scan(scan, generator, step, colour_index)

    return _render(build, defect_type, size, rng, bool(apply_defect))
