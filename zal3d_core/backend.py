"""Feature backends: the protocol, the registry and the built-in FPFH backend.

A backend turns one preprocessed sample into per-patch features. The core ships the
FPFH backend (the BTF baseline); ``zal3d_torch`` adds learned backends through the
``zal3d.backends`` entry-point group, so the core finds them without importing torch
until one is requested.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._validation import check_int, check_organized, check_positive, check_viewpoint

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureBackend",
    "FPFHBackend",
    "PatchFeatures",
    "available_backends",
    "get_backend",
    "load_backend",
    "register_backend",
]

ENTRY_POINT_GROUP = "zal3d.backends"


@dataclasses.dataclass(frozen=True)
class PatchFeatures:
    """Per-patch features of one sample and the geometry of its patch grid.

    Attributes
    ----------
    features : ndarray of shape (n_patches, D), float32
        One row per patch, in row-major order of the grid. Rows of empty patches are
        finite (usually zero) but carry no information; use ``patch_valid``.
    patch_valid : ndarray of shape (n_patches,), bool
        True for patches whose receptive field holds at least one object point.
    grid_shape : tuple of int
        ``(grid_height, grid_width)``, with ``grid_height * grid_width == n_patches``.
    valid : ndarray of shape (H, W), bool
        Pixels of the preprocessed sample that hold a point (the object).
    aux : ndarray of shape (n_patches, D_aux), float32, optional
        Per-patch features that a backend's classifier (``patch_scores``) reads but
        that are not part of the memory bank.
    """

    features: np.ndarray
    patch_valid: np.ndarray
    grid_shape: tuple[int, int]
    valid: np.ndarray
    aux: np.ndarray | None = None

    def __post_init__(self):
        n_patches = self.grid_shape[0] * self.grid_shape[1]
        if self.features.ndim != 2 or self.features.shape[0] != n_patches:
            raise ValueError(
                f"features must have shape ({n_patches}, D) for a grid of "
                f"{self.grid_shape}, but got {self.features.shape}."
            )
        if self.patch_valid.shape != (n_patches,):
            raise ValueError(
                f"patch_valid must have shape ({n_patches},), but got "
                f"{self.patch_valid.shape}."
            )
        if self.valid.ndim != 2:
            raise ValueError(f"valid must be an (H, W) mask, but got {self.valid.shape}.")
        if self.aux is not None and (self.aux.ndim != 2 or self.aux.shape[0] != n_patches):
            raise ValueError(
                f"aux must have shape ({n_patches}, D_aux) for a grid of "
                f"{self.grid_shape}, but got {self.aux.shape}."
            )

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the preprocessed sample."""
        return tuple(self.valid.shape)

    @property
    def feature_dim(self) -> int:
        """Number of feature columns ``D``."""
        return int(self.features.shape[1])


@runtime_checkable
class FeatureBackend(Protocol):
    """What the zero-shot job needs from a feature extractor.

    A backend may also define ``fit(samples, *, progress=False)`` (trainable backends;
    called once with the preprocessed normal training samples before extraction),
    ``state() -> dict[str, ndarray]`` and ``load_state(arrays)`` (learned weights,
    saved inside the model file), and ``patch_scores(features, aux) -> ndarray`` (a
    per-patch anomaly probability in [0, 1] fused with the distance score; it gets the
    valid rows of ``PatchFeatures.features`` and of ``PatchFeatures.aux``).
    """

    name: str
    feature_dim: int

    def extract(self, sample: Any) -> PatchFeatures:
        """Return the patch features of one preprocessed sample."""
        ...

    def config(self) -> dict[str, Any]:
        """Return the JSON-serialisable parameters that rebuild this backend."""
        ...


_REGISTRY: dict[str, Callable[..., FeatureBackend]] = {}


def register_backend(name: str, factory: Callable[..., FeatureBackend]) -> None:
    """Register ``factory(**config) -> FeatureBackend`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"backend name must be a non-empty str, but got {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory for backend {name!r} must be callable.")
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # pragma: no cover - Python < 3.10 API
        found = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {entry.name: entry for entry in found}


def available_backends() -> list[str]:
    """Names of the registered backends and of those installed as entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def load_backend(name: str) -> bool:
    """Register the backend ``name`` from its entry point if it is not registered yet.

    Returns whether a backend of that name is registered afterwards.

    Raises
    ------
    ImportError
        If the backend's package is installed but fails to import (for example torch
        is missing).
    """
    if name in _REGISTRY:
        return True
    entry = _entry_points().get(name)
    if entry is None:
        return False
    logger.debug("loading backend %r from entry point %s", name, entry.value)
    try:
        register = entry.load()
    except ImportError as error:
        raise ImportError(
            f"backend {name!r} needs a package that failed to import: {error}. "
            'Install the torch extra: pip install "zal3d[torch]".'
        ) from error
    register()
    return name in _REGISTRY


def get_backend(name: str, **config: Any) -> FeatureBackend:
    """Build the backend registered as ``name`` with ``config``.

    Raises
    ------
    ValueError
        If no backend of that name is registered or installed.
    ImportError
        If the backend's package is installed but fails to import (for example torch
        is missing).
    """
    if not load_backend(name):
        known = ", ".join(available_backends()) or "none"
        raise ValueError(
            f"unknown backend {name!r}; registered backends: {known}. The learned "
            'backends of 3DzAL come with pip install "zal3d[torch]".'
        )
    return _REGISTRY[name](**config)


def backend_digest(backend: FeatureBackend) -> str:
    """Hash of a backend's name, config and learned state, for cache keys."""
    digest = hashlib.sha256()
    digest.update(backend.name.encode())
    digest.update(json.dumps(backend.config(), sort_keys=True).encode())
    state = getattr(backend, "state", None)
    if callable(state):
        for key, array in sorted(state().items()):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


class FPFHBackend:
    """FPFH patch features of an organized cloud: the BTF baseline.

    Normals and FPFH are computed per point with radii set from the sample's median
    point spacing (or absolute radii when given), scattered back into the (H, W) grid,
    then pooled into a patch grid (3 x 3 average, then adaptive average pooling).

    Parameters
    ----------
    normal_radius_factor : float, default 3.0
        Normal search radius as a multiple of the median point spacing.
    fpfh_radius_factor : float, default 6.0
        FPFH search radius as a multiple of the median point spacing.
    normal_max_nn : int, default 30
        Largest neighbourhood for normals (Open3D's hybrid search ``max_nn``).
    fpfh_max_nn : int, default 100
        Largest neighbourhood for FPFH.
    normal_radius, fpfh_radius : float, optional
        Absolute radii in the cloud's units; they override the factors.
    search : {"window", "tree"}, default "window"
        Neighbour search: image-space window of the organized grid, or the KD-tree.
    grid : int, default 28
        Patch grid size (28 x 28 for 224 x 224 input, as BTF).
    pool_kernel : int, default 3
        Side of the stride-1 average applied before adaptive pooling.
    viewpoint : sequence of 3 floats, default (0, 0, 0)
        Normals point toward it (the camera, in camera coordinates).
    """

    name = "fpfh"
    feature_dim = 33

    def __init__(
        self,
        normal_radius_factor: float = 3.0,
        fpfh_radius_factor: float = 6.0,
        normal_max_nn: int = 30,
        fpfh_max_nn: int = 100,
        normal_radius: float | None = None,
        fpfh_radius: float | None = None,
        search: str = "window",
        grid: int = 28,
        pool_kernel: int = 3,
        viewpoint: Sequence[float] = (0.0, 0.0, 0.0),
    ):
        self.normal_radius_factor = check_positive(normal_radius_factor, "normal_radius_factor")
        self.fpfh_radius_factor = check_positive(fpfh_radius_factor, "fpfh_radius_factor")
        self.normal_max_nn = check_int(normal_max_nn, "normal_max_nn", minimum=3)
        self.fpfh_max_nn = check_int(fpfh_max_nn, "fpfh_max_nn", minimum=2)
        self.normal_radius = (
            None if normal_radius is None else check_positive(normal_radius, "normal_radius")
        )
        self.fpfh_radius = (
            None if fpfh_radius is None else check_positive(fpfh_radius, "fpfh_radius")
        )
        if search not in ("window", "tree"):
            raise ValueError(f"search must be 'window' or 'tree', but got {search!r}.")
        self.search = search
        self.grid = check_int(grid, "grid", minimum=1)
        self.pool_kernel = check_int(pool_kernel, "pool_kernel", minimum=1)
        self.viewpoint = tuple(float(v) for v in check_viewpoint(viewpoint))

    def config(self) -> dict[str, Any]:
        return {
            "normal_radius_factor": self.normal_radius_factor,
            "fpfh_radius_factor": self.fpfh_radius_factor,
            "normal_max_nn": self.normal_max_nn,
            "fpfh_max_nn": self.fpfh_max_nn,
            "normal_radius": self.normal_radius,
            "fpfh_radius": self.fpfh_radius,
            "search": self.search,
            "grid": self.grid,
            "pool_kernel": self.pool_kernel,
            "viewpoint": list(self.viewpoint),
        }

    def radii(self, xyz: np.ndarray) -> tuple[float, float]:
        """Return the normal and FPFH radii for one organized cloud."""
        from .normals import median_point_spacing

        if self.normal_radius is not None and self.fpfh_radius is not None:
            return self.normal_radius, self.fpfh_radius
        spacing = median_point_spacing(xyz)
        normal = self.normal_radius or self.normal_radius_factor * spacing
        fpfh = self.fpfh_radius or self.fpfh_radius_factor * spacing
        return normal, fpfh

    def point_features(self, xyz: np.ndarray) -> np.ndarray:
        """Return the (H, W, 33) FPFH map of an organized cloud, zero off the object."""
        from .fpfh import compute_fpfh_organized
        from .normals import estimate_normals_organized

        normal_radius, fpfh_radius = self.radii(xyz)
        normals = estimate_normals_organized(
            xyz, normal_radius, self.normal_max_nn, self.viewpoint, search=self.search
        )
        return compute_fpfh_organized(
            xyz, normals, fpfh_radius, self.fpfh_max_nn, search=self.search
        )

    def extract(self, sample: Any) -> PatchFeatures:
        """Return the pooled FPFH patch features of one preprocessed sample."""
        from .patches import pool_patch_features

        xyz = getattr(sample, "xyz", sample)
        if xyz is None:
            raise ValueError(
                "the fpfh backend needs the xyz modality, but the sample has none. "
                "Load the dataset with modalities that include 'xyz'."
            )
        xyz = check_organized(xyz, "xyz")
        valid = ~np.isnan(xyz).any(axis=2)
        if valid.sum() < self.normal_max_nn:
            where = " ".join(
                str(part)
                for part in (
                    getattr(sample, "class_name", ""),
                    getattr(sample, "name", ""),
                    f"({sample.path})" if getattr(sample, "path", None) else "",
                )
                if part
            )
            described = f"sample {where}" if where else "the sample"
            raise ValueError(
                f"{described} has {int(valid.sum())} valid points after "
                f"preprocessing, fewer than normal_max_nn={self.normal_max_nn}; check "
                "the background removal settings."
            )
        feature_map = self.point_features(xyz)
        features, patch_valid = pool_patch_features(
            feature_map, valid, grid=(self.grid, self.grid), kernel=self.pool_kernel
        )
        return PatchFeatures(
            features=np.ascontiguousarray(features, dtype=np.float32),
            patch_valid=patch_valid,
            grid_shape=(self.grid, self.grid),
            valid=valid,
        )


register_backend("fpfh", FPFHBackend)
