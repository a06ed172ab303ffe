"""zal3d_core: point clouds in, patch features, memory banks and anomaly scores out.

The core needs NumPy, Numba, SciPy, tifffile and Pillow only; it never imports torch.
Kernels compile on first use and are cached on disk, so importing compiles nothing.
"""

from ._version import __version__
from .backend import (
    FeatureBackend,
    FPFHBackend,
    PatchFeatures,
    available_backends,
    get_backend,
    register_backend,
)
from .coreset import greedy_coreset
from .datasets import MVTec3D, Sample, SampleRecord
from .fpfh import compute_fpfh, compute_fpfh_organized
from .io import (
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_text,
    flatten_organized,
    read_mask,
    read_organized,
    read_points,
    read_rgb,
    write_organized_tiff,
    write_png,
)
from .metrics import UndefinedMetricWarning, au_pro, auroc, pixel_auroc, pro_curve
from .model import Prediction, ZeroShotModel
from .neighbors import KDTree
from .normals import estimate_normals, estimate_normals_organized, median_point_spacing
from .patches import (
    farthest_point_sampling,
    fps_patches,
    organized_patch_points,
    patch_boxes,
    pool_patch_features,
    scatter_to_map,
)
from .preprocess import (
    PlaneFit,
    fit_plane,
    largest_cluster,
    preprocess_sample,
    remove_background,
    resize_mask,
    resize_organized,
    resize_rgb,
)
from .scoring import anomaly_map, image_score, nearest_neighbor_scores, resize_anomaly_map
from .synthesis import (
    CameraModel,
    adding_anomaly,
    fit_camera,
    make_patch,
    random_anchors,
    removing_anomaly,
    select_anchors,
    synthesize_organized,
    synthesize_patches,
)

__all__ = [
    "CameraModel",
    "FPFHBackend",
    "FeatureBackend",
    "KDTree",
    "MVTec3D",
    "PatchFeatures",
    "PlaneFit",
    "Prediction",
    "Sample",
    "SampleRecord",
    "UndefinedMetricWarning",
    "ZeroShotModel",
    "__version__",
    "adding_anomaly",
    "anomaly_map",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "au_pro",
    "auroc",
    "available_backends",
    "compute_fpfh",
    "compute_fpfh_organized",
    "estimate_normals",
    "estimate_normals_organized",
    "farthest_point_sampling",
    "fit_camera",
    "fit_plane",
    "flatten_organized",
    "fps_patches",
    "get_backend",
    "greedy_coreset",
    "image_score",
    "largest_cluster",
    "make_patch",
    "median_point_spacing",
    "nearest_neighbor_scores",
    "organized_patch_points",
    "patch_boxes",
    "pixel_auroc",
    "pool_patch_features",
    "preprocess_sample",
    "pro_curve",
    "random_anchors",
    "read_mask",
    "read_organized",
    "read_points",
    "read_rgb",
    "register_backend",
    "remove_background",
    "removing_anomaly",
    "resize_anomaly_map",
    "resize_mask",
    "resize_organized",
    "resize_rgb",
    "scatter_to_map",
    "select_anchors",
    "synthesize_organized",
    "synthesize_patches",
    "write_organized_tiff",
    "write_png",
]
