"""zal3d_core: point clouds in, patch features, memory banks and anomaly scores out."""

from .neighbors import KDTree

__version__ = "0.1.0"

__all__ = ["KDTree", "__version__"]
