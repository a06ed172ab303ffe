"""Training data for the 3dzal encoder and classifier: patches, labels, scan indices."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from zal3d_core import MVTec3D, ZeroShotModel  # noqa: E402
from zal3d_core.backend import FPFHBackend  # noqa: E402
from zal3d_core.demo import generate_demo_dataset  # noqa: E402
from zal3d_torch.train import build_training_data  # noqa: E402


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("train3d") / "data"
    generate_demo_dataset(root, classes=("gear",), n_train=3, n_validation=0,
                          n_test_good=0, n_test_per_defect=0, size=128, seed=1)
    model = ZeroShotModel("fpfh", preprocess={"size": 96})
    records = MVTec3D(root).samples("gear", "train", ["good"])
    return [model.preprocess(r.load()) for r in records]


def test_patches_carry_their_scan_index(scans):
    data = build_training_data(scans, FPFHBackend(), bias_cnn="none", n_anchors=2,
                               variants_per_sample=2, max_normal_per_sample=50, seed=3)
    assert data.n_samples == 3
    assert data.normal_points.shape == (len(data.normal_fpfh), 64, 3)
    assert data.pseudo_points.shape == (len(data.pseudo_fpfh), 64, 3)
    assert data.normal_scan.shape == (len(data.normal_fpfh),)
    assert data.pseudo_scan.shape == (len(data.pseudo_fpfh),)
    counts = np.bincount(data.normal_scan, minlength=3)
    assert counts.tolist() == [50, 50, 50]
    assert set(np.unique(data.pseudo_scan)) <= {0, 1, 2}
    assert len(data.pseudo_fpfh) > 0
    # Scan indices are sorted because the scans are processed in order.
    assert np.all(np.diff(data.normal_scan) >= 0)
    assert np.all(np.diff(data.pseudo_scan) >= 0)


def test_training_data_repeats_for_a_seed(scans):
    first = build_training_data(scans, FPFHBackend(), bias_cnn="none", n_anchors=2,
                                variants_per_sample=1, seed=5)
    second = build_training_data(scans, FPFHBackend(), bias_cnn="none", n_anchors=2,
                                 variants_per_sample=1, seed=5)
    for name in ("normal_points", "normal_fpfh", "pseudo_points", "pseudo_fpfh",
                 "normal_scan", "pseudo_scan"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
