"""Shared fixtures: paths to the real scans used by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Real scans (MVTec 3D-AD samples, PCL sample scans) are not part of the repository.
# Point ZAL3D_DATA at a folder that holds mvtec3d/, pcl_data/ and pcl_test/; the
# default is the data folder beside the checkout.
DATA_DIR = Path(os.environ.get("ZAL3D_DATA", ROOT.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Return a path inside the real-data folder, or skip the test if it is absent."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}; set ZAL3D_DATA to the folder that holds "
            "mvtec3d/, pcl_data/ and pcl_test/"
        )
    return path


@pytest.fixture
def pcl_data() -> Path:
    """Folder of the PCL sample scans (organized 640 x 480 sensor clouds and more)."""
    return data_path("pcl_data", "tutorials")


@pytest.fixture
def pcl_test() -> Path:
    """Folder of the PCL unit-test scans (Stanford bunny, milk carton, turtle)."""
    return data_path("pcl_test", "test")


@pytest.fixture
def mvtec_root() -> Path:
    """MVTec 3D-AD root holding the tire class (rgb and gt, no xyz)."""
    return data_path("mvtec3d")
