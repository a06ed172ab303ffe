"""The built-in demo dataset: procedural or real-scan objects in the MVTec 3D-AD layout.

MVTec 3D-AD cannot ship with the package, so the demo renders a small dataset of the
same layout: organized xyz tiffs, rgb PNGs and gt masks. They show objects on a
background plane, seen by a simulated structured-light sensor, with six kinds of
geometric defect. ``docs/demo_data.md`` describes the classes, the defect models,
the mask rule and the sensor model.

- :func:`generate_demo_dataset` writes procedural classes (``DEMO_CLASSES``).
- :func:`generate_real_geometry_dataset` writes classes made from real scans.
- :func:`render_demo_sample` and :func:`render_scan_sample` render one sample in
  memory, also as the defect-free twin of a defective sample.
"""

from .dataset import (
    DEFAULT_SCANS,
    MANIFEST_NAME,
    generate_demo_dataset,
    generate_real_geometry_dataset,
    sample_seed,
)
from .defects import DEFECT_TYPES, MASK_THRESHOLD
from .sample import DEMO_CLASSES, DemoSample, render_demo_sample, render_scan_sample

__all__ = [
    "DEFAULT_SCANS",
    "DEFECT_TYPES",
    "DEMO_CLASSES",
    "MANIFEST_NAME",
    "MASK_THRESHOLD",
    "DemoSample",
    "generate_demo_dataset",
    "generate_real_geometry_dataset",
    "render_demo_sample",
    "render_scan_sample",
    "sample_seed",
]
