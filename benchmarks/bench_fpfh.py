"""Benchmarks of normals + FPFH beside Open3D, and of the first-call JIT compile.

Run with::

    python -m pytest benchmarks/bench_fpfh.py --benchmark-only

Each group times zal3d and Open3D in the same process on the same input and search
parameters. Normals use radius 3 x spacing and max_nn 30, FPFH radius 6 x spacing and
max_nn 100. zal3d runs on ``THREADS`` threads, and Open3D on its OpenMP default of
one thread per core. Kernels are called once before timing, so JIT compilation is
excluded. The ``jit`` group times the compile on its own in fresh processes.
``python benchmarks/bench_fpfh.py`` prints the parity with Open3D on the real scans and
how far image-window results are from KD-tree results on the organized captures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from zal3d_core.fpfh import compute_fpfh, compute_fpfh_organized
from zal3d_core.io import read_organized, read_points
from zal3d_core.normals import (
    estimate_normals,
    estimate_normals_organized,
    median_point_spacing,
    resolve_window,
    search_tree,
    search_window,
)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ZAL3D_DATA", ROOT.parent / "shared" / "data"))
THREADS = 2
NORMAL_SCALE, NORMAL_NN = 3.0, 30
FPFH_SCALE, FPFH_NN = 6.0, 100


def read_pcd(path: Path, organized: bool = False) -> np.ndarray:
    """Read a PCD file: the finite points as (N, 3), or (H, W, 3) with NaN holes."""
    if organized:
        return read_organized(path).astype(np.float64)
    return read_points(path).astype(np.float64)


def organized_224() -> tuple[np.ndarray, str]:
    """Return a PCL capture's valid region resized to 224 x 224 (nearest), float32.

    Without the real data, return a smooth synthetic surface of the same size.
    """
    path = DATA_DIR / "pcl_data" / "tutorials" / "pairwise" / "capture0001.pcd"
    if path.exists():
        xyz = read_pcd(path, organized=True)
        valid = ~np.isnan(xyz).any(axis=2)
        rows = np.flatnonzero(valid.any(axis=1))
        cols = np.flatnonzero(valid.any(axis=0))
        crop = xyz[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        row_index = np.arange(224) * crop.shape[0] // 224
        col_index = np.arange(224) * crop.shape[1] // 224
        resized = crop[row_index][:, col_index]
        return np.ascontiguousarray(resized, np.float32), "capture0001 (224 x 224)"
    xs, ys = np.meshgrid(np.linspace(-0.3, 0.3, 224), np.linspace(-0.3, 0.3, 224))
    zs = 1.0 + 0.05 * np.sin(8 * xs) * np.cos(6 * ys)
    xyz = np.stack([xs * zs, ys * zs, zs], axis=2).astype(np.float32)
    return xyz, "synthetic surface (224 x 224)"


def scan_100k() -> tuple[np.ndarray, str]:
    """Return cturtle.pcd (167,198 points), or a synthetic surface of the same size."""
    path = DATA_DIR / "pcl_test" / "test" / "cturtle.pcd"
    if path.exists():
        return read_pcd(path).astype(np.float32), "cturtle.pcd (167198 points)"
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, size=(167198, 2))
    z = 1.5 + 0.1 * np.sin(5 * xy[:, 0]) * np.cos(4 * xy[:, 1])
    return np.column_stack([xy, z]).astype(np.float32), "synthetic surface (167198)"


@pytest.fixture(scope="module")
def organized():
    xyz, name = organized_224()
    return xyz, median_point_spacing(xyz), name


@pytest.fixture(scope="module")
def scan():
    points, name = scan_100k()
    return points, median_point_spacing(points), name


def ours_organized(xyz, spacing, search):
    normals = estimate_normals_organized(
        xyz, NORMAL_SCALE * spacing, NORMAL_NN, search=search, n_jobs=THREADS
    )
    return compute_fpfh_organized(
        xyz, normals, FPFH_SCALE * spacing, FPFH_NN, search=search, n_jobs=THREADS
    )


def ours_points(points, spacing):
    normals = estimate_normals(
        points, NORMAL_SCALE * spacing, NORMAL_NN, n_jobs=THREADS
    )
    return compute_fpfh(points, normals, FPFH_SCALE * spacing, FPFH_NN, n_jobs=THREADS)


def open3d_points(points, spacing):
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(
        o3d.utility.Vector3dVector(points.astype(np.float64))
    )
    cloud.estimate_normals(
        o3d.geometry.KDTreeSearchParamHybrid(NORMAL_SCALE * spacing, NORMAL_NN)
    )
    return o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(FPFH_SCALE * spacing, FPFH_NN)
    )


def valid_points(xyz):
    flat = xyz.reshape(-1, 3)
    return flat[~np.isnan(flat).any(axis=1)]


def describe(benchmark, name, backend):
    import numba
    import open3d as o3d

    benchmark.extra_info.update(
        {
            "input": name,
            "backend": backend,
            "numba_threads": THREADS,
            "open3d_threads (one per core)": os.cpu_count(),
            "numba": numba.__version__,
            "open3d": o3d.__version__,
            "numpy": np.__version__,
        }
    )


@pytest.mark.benchmark(group="organized-224")
@pytest.mark.parametrize("search", ["window", "tree"])
def test_bench_organized_zal3d(benchmark, organized, search):
    xyz, spacing, name = organized
    ours_organized(xyz, spacing, search)
    describe(benchmark, name, f"zal3d {search}")
    benchmark(ours_organized, xyz, spacing, search)


@pytest.mark.benchmark(group="organized-224")
def test_bench_organized_open3d(benchmark, organized):
    pytest.importorskip("open3d")
    xyz, spacing, name = organized
    points = valid_points(xyz)
    describe(benchmark, name, "open3d")
    benchmark(open3d_points, points, spacing)


@pytest.mark.benchmark(group="scan-100k")
def test_bench_scan_zal3d(benchmark, scan):
    points, spacing, name = scan
    ours_points(points, spacing)
    describe(benchmark, name, "zal3d tree")
    benchmark(ours_points, points, spacing)


@pytest.mark.benchmark(group="scan-100k")
def test_bench_scan_open3d(benchmark, scan):
    pytest.importorskip("open3d")
    points, spacing, name = scan
    describe(benchmark, name, "open3d")
    benchmark(open3d_points, points, spacing)


COMPILE_SCRIPT = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import numpy as np
    from zal3d_core.fpfh import compute_fpfh
    from zal3d_core.normals import estimate_normals
    imported = time.perf_counter()
    points = np.random.default_rng(0).uniform(size=(500, 3))
    normals = estimate_normals(points, 0.2, 30)
    compute_fpfh(points, normals, 0.3, 100)
    done = time.perf_counter()
    print(f"{imported - start:.3f} {done - imported:.3f}")
    """
)


def run_compile_script(cache_dir: str) -> tuple[float, float]:
    """Time normals + FPFH on 500 points in a new process: (import, first call) in s."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    output = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    import_s, call_s = (float(value) for value in output.split())
    return import_s, call_s


@pytest.mark.benchmark(group="jit")
@pytest.mark.parametrize("cache", ["empty", "warm"])
def test_bench_first_call(benchmark, cache):
    with tempfile.TemporaryDirectory() as cache_dir:
        if cache == "warm":
            run_compile_script(cache_dir)
        timings = {}

        def first_call():
            timings["import_s"], timings["first_call_s"] = run_compile_script(cache_dir)

        benchmark.pedantic(first_call, rounds=1, iterations=1)
    benchmark.extra_info.update({"cache": cache, **timings})


def relative_l1(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, ``sum |ours - reference| / sum |reference|`` (0 where both are 0)."""
    error = np.abs(np.asarray(ours, np.float64) - reference).sum(axis=1)
    scale = np.abs(reference).sum(axis=1)
    return np.where(scale > 0, error / np.where(scale > 0, scale, 1.0), error)


def open3d_parity(points: np.ndarray) -> dict:
    """Compare FPFH with Open3D's, given our normals, on one unorganized cloud."""
    import open3d as o3d

    spacing = median_point_spacing(points)
    normals = estimate_normals(points, NORMAL_SCALE * spacing, NORMAL_NN)
    features = compute_fpfh(points, normals, FPFH_SCALE * spacing, FPFH_NN)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.estimate_normals(
        o3d.geometry.KDTreeSearchParamHybrid(NORMAL_SCALE * spacing, NORMAL_NN)
    )
    dots = np.abs(np.sum(normals * np.asarray(cloud.normals), axis=1))
    cloud.normals = o3d.utility.Vector3dVector(normals.astype(np.float64))
    theirs = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(FPFH_SCALE * spacing, FPFH_NN)
    )
    error = relative_l1(features, np.asarray(theirs.data).T)
    return {
        "points": len(points),
        "normals_dot_share": float(np.mean(dots > 1 - 1e-6)),
        "fpfh_relative_l1_mean": float(error.mean()),
        "fpfh_relative_l1_p99": float(np.percentile(error, 99)),
    }


def window_agreement(xyz: np.ndarray) -> dict:
    """Compare window and KD-tree neighbourhoods, normals and FPFH on one cloud."""
    pitch = median_point_spacing(xyz)
    valid = ~np.isnan(xyz).any(axis=2)
    rows = np.flatnonzero(valid.ravel())
    result = {"valid": int(valid.sum()), "pitch": pitch}

    normals = estimate_normals_organized(
        xyz, NORMAL_SCALE * pitch, NORMAL_NN, search="tree"
    )
    for stage, scale, max_nn in (
        ("normals", NORMAL_SCALE, NORMAL_NN),
        ("fpfh", FPFH_SCALE, FPFH_NN),
    ):
        radius = scale * pitch
        half = resolve_window(xyz, radius, None)
        window = search_window(xyz, radius, max_nn, half)
        tree = search_tree(xyz.reshape(-1, 3)[valid.ravel()], radius, max_nn)
        same = [
            np.array_equal(
                window.indices[window.indptr[r] : window.indptr[r + 1]],
                rows[tree.indices[tree.indptr[c] : tree.indptr[c + 1]]],
            )
            for c, r in enumerate(rows)
        ]
        result[f"{stage}_half_width"] = half
        result[f"{stage}_same_share"] = float(np.mean(same))

    window_normals = estimate_normals_organized(
        xyz, NORMAL_SCALE * pitch, NORMAL_NN, search="window"
    )
    dots = np.abs(np.sum(window_normals[valid] * normals[valid], axis=1))
    result["normals_dot_share"] = float(np.mean(dots > 1 - 1e-6))

    features = {
        search: compute_fpfh_organized(
            xyz, normals, FPFH_SCALE * pitch, FPFH_NN, search=search
        )[valid]
        for search in ("window", "tree")
    }
    error = relative_l1(features["window"], features["tree"].astype(np.float64))
    result["fpfh_relative_l1_mean"] = float(error.mean())
    result["fpfh_relative_l1_p99"] = float(np.percentile(error, 99))
    return result


def main() -> None:
    """Print the Open3D parity and the window-versus-tree agreement on real scans."""
    tutorials = DATA_DIR / "pcl_data" / "tutorials"
    tests = DATA_DIR / "pcl_test" / "test"
    captures = [
        tutorials / "pairwise" / "capture0001.pcd",
        tutorials / "pairwise" / "capture0002.pcd",
        tutorials / "table_scene_mug_stereo_textured.pcd",
        tutorials / "correspondence_grouping" / "milk_cartoon_all_small_clorox.pcd",
    ]
    scans = [
        tests / "bunny.pcd",
        tests / "milk.pcd",
        tests / "cturtle.pcd",
        tutorials / "region_growing_tutorial.pcd",
        tutorials / "room_scan1.pcd",
        *captures,
    ]
    print("FPFH and normals against Open3D (same points, our normals):")
    for path in scans:
        print(path.name, open3d_parity(read_pcd(path)))
    print("Image window against KD-tree:")
    for path in captures:
        print(
            path.name,
            window_agreement(read_pcd(path, organized=True)),
        )
    xyz, name = organized_224()
    print(name, window_agreement(xyz))


if __name__ == "__main__":
    main()
