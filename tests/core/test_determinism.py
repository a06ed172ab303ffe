"""The same seed gives bit-identical results across runs and thread counts.

In-process checks compare Numba kernels run with 1 and with 2 threads
(``numba.set_num_threads``). The last test runs a whole ``zal3d zero-shot`` job twice in
subprocesses, once with ``NUMBA_NUM_THREADS=1`` and single-threaded BLAS, and compares
the result files byte for byte. Only ``timings.json`` may differ.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from zal3d_core import (
    FPFHBackend,
    ZeroShotModel,
    compute_fpfh,
    compute_fpfh_organized,
    estimate_normals,
    estimate_normals_organized,
    farthest_point_sampling,
    fit_plane,
    greedy_coreset,
    nearest_neighbor_scores,
    random_anchors,
    remove_background,
    select_anchors,
    synthesize_organized,
)
from zal3d_core.datasets import Sample
from zal3d_core.demo import DEMO_CLASSES, generate_demo_dataset

needs_two_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2,
    reason="Numba was started with fewer than 2 threads",
)


def scan(size=48, seed=0) -> np.ndarray:
    """A curved pinhole scan above a background plane, with holes."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    depth = 0.6 - 0.05 * np.exp(
        -((rows - size / 2) ** 2 + (cols - size / 2) ** 2) / 120.0
    )
    depth += 2e-4 * rng.standard_normal((size, size))
    xyz = np.stack(
        [(cols - size / 2) * depth / 400, (rows - size / 2) * depth / 400, depth], -1
    )
    xyz[rng.random((size, size)) < 0.03] = np.nan
    return xyz


def results_of(run) -> dict[str, np.ndarray]:
    """Run ``run`` with 1 and with 2 Numba threads and return both results."""
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = run()
        numba.set_num_threads(2)
        double = run()
    finally:
        numba.set_num_threads(previous)
    return single, double


def assert_identical(single: dict, double: dict) -> None:
    assert single.keys() == double.keys()
    for key, value in single.items():
        a, b = np.asarray(value), np.asarray(double[key])
        assert a.dtype == b.dtype, key
        assert a.tobytes() == b.tobytes(), f"{key} differs between thread counts"


def geometry() -> dict[str, np.ndarray]:
    xyz = scan()
    points = xyz.reshape(-1, 3)
    points = points[~np.isnan(points).any(axis=1)]
    normals = estimate_normals(points, 0.004, 30)
    organized = estimate_normals_organized(xyz, 0.004, 30)
    return {
        "normals": normals,
        "fpfh": compute_fpfh(points, normals, 0.008, 100),
        "normals window": organized,
        "fpfh window": compute_fpfh_organized(xyz, organized, 0.008, 100),
        "fpfh tree": compute_fpfh_organized(xyz, organized, 0.008, 100, search="tree"),
        "backend": FPFHBackend(grid=8).extract(xyz.astype(np.float32)).features,
        "fps": farthest_point_sampling(points, 40),
    }


def memory_bank() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    bank = rng.standard_normal((2000, 33)).astype(np.float32)
    wide = rng.standard_normal((1500, 300)).astype(np.float32)
    queries = rng.standard_normal((400, 33)).astype(np.float32)
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries, bank, return_details=True, block_size=256
    )
    return {
        "coreset": greedy_coreset(bank, n=64, seed=3),
        "coreset projected": greedy_coreset(wide, n=32, projection_dim=16, seed=3),
        "scores": scores,
        "distances": distances,
        "nearest": nearest,
        "support": support,
    }


def randomized() -> dict[str, np.ndarray]:
    xyz = scan()
    valid = ~np.isnan(xyz).any(axis=2)
    points = xyz[valid]
    added, added_mask = synthesize_organized(
        xyz, [24 * 48 + 24], kind="adding", k=40, seed=5
    )
    removed, removed_mask = synthesize_organized(
        xyz, [10 * 48 + 10], kind="removing", k=40, fraction=0.6, seed=5
    )
    return {
        "plane": fit_plane(points, seed=11).coefficients,
        "background": remove_background(xyz, border=4, seed=11),
        "added": added,
        "added mask": added_mask,
        "removed": removed,
        "removed mask": removed_mask,
        "anchors": select_anchors(xyz[..., 2], valid, 5, jitter=0.5, seed=9),
        "random anchors": random_anchors(valid, 5, seed=9),
    }


@needs_two_threads
@pytest.mark.parametrize(
    "run", [geometry, memory_bank, randomized], ids=lambda f: f.__name__
)
def test_same_results_for_one_and_two_threads(run):
    single, double = results_of(run)
    assert_identical(single, double)
    assert_identical(run(), single)


def test_model_fit_and_predict_repeat_exactly():
    def fitted():
        model = ZeroShotModel(
            FPFHBackend(grid=8),
            preprocess={"size": 48, "remove_plane": True},
            coreset_ratio=0.25,
            seed=4,
        )
        samples = [
            Sample(
                xyz=scan(seed=s).astype(np.float32),
                rgb=None,
                gt=None,
                label=0,
                class_name="c",
                split="train",
                defect="good",
                name=str(s),
                path=None,
            )
            for s in range(3)
        ]
        model.fit(samples)
        prediction = model.predict(samples[0])
        return {
            "bank": model.bank,
            "map": prediction.anomaly_map,
            "patch scores": prediction.patch_scores,
        }

    assert_identical(fitted(), fitted())


def test_zero_shot_run_ignores_thread_count(tmp_path):
    data = generate_demo_dataset(
        tmp_path / "data",
        classes=DEMO_CLASSES[:2],
        n_train=2,
        n_validation=0,
        n_test_good=1,
        n_test_per_defect=1,
        defect_types=("dent",),
        size=128,
        seed=0,
    )
    outputs = {}
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        if threads == "1":
            env.update(
                OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"
            )
        out = tmp_path / f"out{threads}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "zal3d_core.cli",
                "zero-shot",
                "--data-root",
                str(data),
                "--train-class",
                "all",
                "--out",
                str(out),
                "--size",
                "64",
                "--heatmaps",
                "1",
                "--no-cache",
                "-q",
            ],
            check=True,
            env=env,
            timeout=600,
            capture_output=True,
        )
        outputs[threads] = out
    names = sorted(
        str(path.relative_to(outputs["1"]))
        for path in outputs["1"].rglob("*")
        if path.is_file() and path.name != "timings.json"
    )
    assert "results.json" in names
    assert any(name.endswith(".png") for name in names)
    for name in names:
        first = (outputs["1"] / name).read_bytes()
        second = (outputs["2"] / name).read_bytes()
        assert first == second, f"{name} differs between 1 and 2 threads"
    assert "NaN" not in (outputs["2"] / "results.json").read_text()
