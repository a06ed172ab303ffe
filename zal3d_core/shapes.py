"""Procedural shapes sampled as dense point sets, the default source of "adding" anomalies.

An "adding" pseudo anomaly glues a patch of foreign surface onto a normal scan. The
foreign surface must not come from the evaluation set, because patches of the test
classes in the training data would leak those classes into a zero-shot method. These
shapes are unrelated to any dataset: spheres, boxes, cylinders, tori and blobs, each
sampled uniformly by area (the blob approximately) and fully determined by its seed.

Examples
--------
>>> from zal3d_core.shapes import sample_random_shape, sample_sphere
>>> sample_sphere(500, radius=2.0).shape
(500, 3)
>>> points = sample_random_shape(1000, seed=3)
>>> points.shape, points.dtype
((1000, 3), dtype('float64'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validation import check_int, check_positive, check_rng

__all__ = [
    "SHAPE_KINDS",
    "random_rotation",
    "sample_blob",
    "sample_box",
    "sample_cylinder",
    "sample_random_shape",
    "sample_shape",
    "sample_sphere",
    "sample_torus",
]

SHAPE_KINDS = ("sphere", "box", "cylinder", "torus", "blob")


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    # Normalised Gaussian vectors are uniform on the sphere. A zero vector has
    # probability zero, but replace it anyway so no division by zero can occur.
    vectors = rng.standard_normal((n, 3))
    norms = np.linalg.norm(vectors, axis=1)
    vectors[norms == 0] = (0.0, 0.0, 1.0)
    norms[norms == 0] = 1.0
    return vectors / norms[:, None]


def sample_sphere(n_points: int, *, radius: float = 1.0, seed: Any = 0) -> np.ndarray:
    """Sample points uniformly on a sphere centred at the origin.

    Parameters
    ----------
    n_points : int
        Number of points, >= 1.
    radius : float, default 1.0
        Sphere radius, > 0.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    radius = check_positive(radius, "radius")
    rng = check_rng(seed)
    return radius * _unit_vectors(rng, n_points)


def sample_box(
    n_points: int, *, size: Sequence[float] = (1.0, 1.0, 1.0), seed: Any = 0
) -> np.ndarray:
    """Sample points uniformly on the surface of an axis-aligned box centred at the origin.

    Each point picks a face with probability proportional to the face's area, then a
    uniform position on that face.

    Parameters
    ----------
    n_points : int
        Number of points, >= 1.
    size : sequence of 3 floats, default (1, 1, 1)
        Edge lengths along x, y and z, each > 0.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    size = _check_size(size)
    rng = check_rng(seed)
    half = 0.5 * size
    # Faces 0..5 are -x, +x, -y, +y, -z, +z. The face normal to axis a has the area
    # of the product of the other two edges.
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    face_areas = np.repeat(areas, 2)
    faces = rng.choice(6, size=n_points, p=face_areas / face_areas.sum())
    points = rng.uniform(-1.0, 1.0, (n_points, 3)) * half
    axis = faces // 2
    sign = np.where(faces % 2 == 1, 1.0, -1.0)
    points[np.arange(n_points), axis] = sign * half[axis]
    return points


def _check_size(size: Any) -> np.ndarray:
    array = np.asarray(size, dtype=np.float64)
    if array.shape != (3,) or not np.isfinite(array).all() or (array <= 0).any():
        raise ValueError(
            f"size must be three finite edge lengths > 0, but got {size!r}. Pass for "
            "example size=(1.0, 0.5, 2.0)."
        )
    return array


def sample_cylinder(
    n_points: int, *, radius: float = 0.5, height: float = 1.0, seed: Any = 0
) -> np.ndarray:
    """Sample points uniformly on a closed cylinder (side and both caps) along z.

    Parameters
    ----------
    n_points : int
        Number of points, >= 1.
    radius : float, default 0.5
        Radius, > 0.
    height : float, default 1.0
        Height, > 0. The cylinder spans ``z`` in ``[-height / 2, height / 2]``.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    radius = check_positive(radius, "radius")
    height = check_positive(height, "height")
    rng = check_rng(seed)
    side_area = 2.0 * np.pi * radius * height
    cap_area = np.pi * radius * radius
    on_side = rng.random(n_points) < side_area / (side_area + 2.0 * cap_area)
    angle = rng.uniform(0.0, 2.0 * np.pi, n_points)
    # On a cap, radius * sqrt(U) gives a uniform density over the disc.
    rho = np.where(on_side, radius, radius * np.sqrt(rng.random(n_points)))
    cap_z = np.where(rng.random(n_points) < 0.5, -0.5, 0.5) * height
    z = np.where(on_side, rng.uniform(-0.5, 0.5, n_points) * height, cap_z)
    return np.column_stack([rho * np.cos(angle), rho * np.sin(angle), z])


def sample_torus(
    n_points: int,
    *,
    major_radius: float = 1.0,
    minor_radius: float = 0.3,
    seed: Any = 0,
) -> np.ndarray:
    """Sample points uniformly on a torus around the z axis.

    The tube angle is drawn by rejection, because the area element grows with the
    distance ``major_radius + minor_radius * cos(tube angle)`` from the axis.

    Parameters
    ----------
    n_points : int
        Number of points, >= 1.
    major_radius : float, default 1.0
        Distance from the axis to the centre of the tube, > ``minor_radius``.
    minor_radius : float, default 0.3
        Tube radius, > 0.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    major_radius = check_positive(major_radius, "major_radius")
    minor_radius = check_positive(minor_radius, "minor_radius")
    if minor_radius >= major_radius:
        raise ValueError(
            f"minor_radius must be smaller than major_radius, but got "
            f"minor_radius={minor_radius} and major_radius={major_radius}. A larger "
            "tube would intersect itself."
        )
    rng = check_rng(seed)
    tube_angles = np.empty(0)
    while tube_angles.size < n_points:
        # The acceptance rate is at least (R - r) / (R + r), so a batch of twice the
        # missing count needs few rounds for any valid torus of moderate thickness.
        batch = 2 * (n_points - tube_angles.size) + 16
        candidates = rng.uniform(0.0, 2.0 * np.pi, batch)
        density = (major_radius + minor_radius * np.cos(candidates)) / (
            major_radius + minor_radius
        )
        accepted = candidates[rng.random(batch) < density]
        tube_angles = np.concatenate([tube_angles, accepted])
    tube_angles = tube_angles[:n_points]
    ring_angles = rng.uniform(0.0, 2.0 * np.pi, n_points)
    rho = major_radius + minor_radius * np.cos(tube_angles)
    return np.column_stack(
        [
            rho * np.cos(ring_angles),
            rho * np.sin(ring_angles),
            minor_radius * np.sin(tube_angles),
        ]
    )


def sample_blob(
    n_points: int,
    *,
    radius: float = 1.0,
    roughness: float = 0.3,
    n_waves: int = 6,
    seed: Any = 0,
) -> np.ndarray:
    """Sample points on a lumpy closed surface: a sphere with a smooth random radius.

    The radius in direction ``d`` is ``radius * (1 + roughness * s(d))``, where ``s`` is
    a sum of ``n_waves`` plane waves ``cos(f * d.w + phase)`` with random unit vectors
    ``w``, frequencies ``f`` in ``[1, 3]`` and weights, scaled so that ``|s| <= 1``. The
    directions are uniform on the sphere, so the density on the surface is only
    approximately uniform where the radius varies.

    Parameters
    ----------
    n_points : int
        Number of points, >= 1.
    radius : float, default 1.0
        Mean radius, > 0.
    roughness : float, default 0.3
        Largest relative change of the radius, in ``[0, 1)``, so the radius stays
        positive.
    n_waves : int, default 6
        Number of plane waves, >= 1.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    radius = check_positive(radius, "radius")
    roughness = check_positive(roughness, "roughness", allow_zero=True)
    if roughness >= 1.0:
        raise ValueError(
            f"roughness must be in [0, 1), but got {roughness}. At 1 or more the "
            "radius can reach zero and the surface folds through the centre."
        )
    n_waves = check_int(n_waves, "n_waves", minimum=1)
    rng = check_rng(seed)
    wave_directions = _unit_vectors(rng, n_waves)
    frequencies = rng.uniform(1.0, 3.0, n_waves)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    weights = rng.uniform(0.5, 1.0, n_waves)
    directions = _unit_vectors(rng, n_points)
    waves = np.cos(directions @ wave_directions.T * frequencies + phases)
    relief = waves @ weights / weights.sum()
    return directions * (radius * (1.0 + roughness * relief))[:, None]


def sample_shape(kind: str, n_points: int, *, seed: Any = 0, **params: Any) -> np.ndarray:
    """Sample one shape by name, with its sampler's keyword parameters.

    Parameters
    ----------
    kind : {"sphere", "box", "cylinder", "torus", "blob"}
    n_points : int
        Number of points, >= 1.
    seed : int or np.random.Generator, default 0
    **params
        Keyword parameters of the sampler, for example ``radius`` for a sphere.

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`SHAPE_KINDS`.
    """
    samplers = {
        "sphere": sample_sphere,
        "box": sample_box,
        "cylinder": sample_cylinder,
        "torus": sample_torus,
        "blob": sample_blob,
    }
    if kind not in samplers:
        raise ValueError(
            f"kind must be one of {', '.join(SHAPE_KINDS)}, but got {kind!r}."
        )
    return samplers[kind](n_points, seed=seed, **params)


def random_rotation(seed: Any = 0) -> np.ndarray:
    """Return a rotation matrix drawn uniformly from all 3D rotations.

    A normalised 4D Gaussian vector is a uniform unit quaternion, and the rotation of a
    uniform unit quaternion is uniform over the rotation group.
    """
    rng = check_rng(seed)
    q = rng.standard_normal(4)
    norm = np.linalg.norm(q)
    w, x, y, z = q / norm if norm > 0 else (1.0, 0.0, 0.0, 0.0)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def sample_random_shape(
    n_points: int = 2048, *, kinds: Sequence[str] = SHAPE_KINDS, seed: Any = 0
) -> np.ndarray:
    """Sample a random shape with random proportions and a random rotation.

    The kind is drawn uniformly from ``kinds``, and its proportions from fixed ranges.
    A sphere has radius 1 and box edges lie in [0.5, 1.5]. A cylinder has radius in
    [0.3, 0.7] and height in [0.5, 2]. A torus has ring radius 1 and tube radius in
    [0.2, 0.5], and a blob has roughness in [0.1, 0.4]. The rotation is uniform, so the point of largest z,
    where an "adding" patch is cut, falls on a random part of the shape (a box face,
    edge or corner, a cylinder rim, ...). The points are centred on their mean.

    Parameters
    ----------
    n_points : int, default 2048
        Number of points, >= 1.
    kinds : sequence of str, default SHAPE_KINDS
        The kinds to draw from, each one of :data:`SHAPE_KINDS`.
    seed : int or np.random.Generator, default 0

    Returns
    -------
    points : ndarray of shape (n_points, 3), float64

    Raises
    ------
    ValueError
        If ``kinds`` is empty or names an unknown kind.
    """
    n_points = check_int(n_points, "n_points", minimum=1)
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(
            f"kinds must name at least one shape kind of {', '.join(SHAPE_KINDS)}, "
            "but got an empty sequence."
        )
    unknown = [kind for kind in kinds if kind not in SHAPE_KINDS]
    if unknown:
        raise ValueError(
            f"kinds must contain only {', '.join(SHAPE_KINDS)}, but got {unknown!r}."
        )
    rng = check_rng(seed)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "sphere":
        points = sample_sphere(n_points, seed=rng)
    elif kind == "box":
        points = sample_box(n_points, size=rng.uniform(0.5, 1.5, 3), seed=rng)
    elif kind == "cylinder":
        points = sample_cylinder(
            n_points, radius=rng.uniform(0.3, 0.7), height=rng.uniform(0.5, 2.0), seed=rng
        )
    elif kind == "torus":
        points = sample_torus(n_points, minor_radius=rng.uniform(0.2, 0.5), seed=rng)
    else:
        points = sample_blob(n_points, roughness=rng.uniform(0.1, 0.4), seed=rng)
    points = points @ random_rotation(rng).T
    return points - points.mean(axis=0)
