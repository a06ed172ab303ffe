"""Tests of zal3d_core.io: readers, their error messages and the atomic writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zal3d_core import io as zio
from zal3d_core.io import (
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

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------
# A small PCD writer, independent of pypcd4, for the header variants real files have.

_PCD_TYPES = {
    np.dtype(np.float32): ("F", 4),
    np.dtype(np.float64): ("F", 8),
    np.dtype(np.uint8): ("U", 1),
    np.dtype(np.uint32): ("U", 4),
    np.dtype(np.int16): ("I", 2),
}


def write_pcd(
    path,
    columns,
    *,
    width,
    height=1,
    encoding="binary",
    version="0.7",
    newline="\n",
    separator=" ",
    viewpoint=True,
):
    """Write ``columns`` (name -> (N,) or (N, count) array) as a PCD file."""
    names, sizes, types, counts, arrays = [], [], [], [], []
    for name, values in columns.items():
        values = np.asarray(values)
        values = values.reshape(len(values), -1)
        kind, size = _PCD_TYPES[values.dtype]
        names.append(name)
        sizes.append(str(size))
        types.append(kind)
        counts.append(str(values.shape[1]))
        arrays.append(values)
    n = width * height
    header = [
        "# .PCD v0.7 - Point Cloud Data file format",
        f"VERSION {version}",
        "FIELDS " + " ".join(names),
        "SIZE " + " ".join(sizes),
        "TYPE " + " ".join(types),
        "COUNT " + " ".join(counts),
        f"WIDTH {width}",
        f"HEIGHT {height}",
    ]
    if viewpoint:
        header.append("VIEWPOINT 0 0 0 1 0 0 0")
    header += [f"POINTS {n}", f"DATA {encoding}"]
    data = (newline.join(header) + newline).encode("ascii")
    if encoding == "ascii":
        rows = []
        for i in range(n):
            parts = []
            for values in arrays:
                for v in values[i]:
                    if values.dtype.kind == "f":
                        parts.append("nan" if np.isnan(v) else repr(float(v)))
                    else:
                        parts.append(str(int(v)))
            rows.append(separator.join(parts))
        data += (newline.join(rows) + newline).encode("ascii")
    elif encoding == "binary":
        dtype = np.dtype(
            [(f"f{i}", a.dtype, (a.shape[1],)) for i, a in enumerate(arrays)]
        )
        records = np.empty(n, dtype)
        for i, a in enumerate(arrays):
            records[f"f{i}"] = a
        data += records.tobytes()
    else:
        lzf = pytest.importorskip("lzf")

        # Field-major: all values of field 0, then all of field 1, and so on.
        raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        # LZF output of random data can be longer than its input.
        compressed = lzf.compress(raw, 2 * len(raw) + 64)
        data += np.array([len(compressed), len(raw)], "<u4").tobytes() + compressed
    Path(path).write_bytes(data)
    return Path(path)


def organized_cloud(height=4, width=5, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1, 1, (height, width, 3)).astype(np.float32)
    xyz[0, 0] = np.nan
    xyz[1, 2, 1] = np.nan  # one NaN coordinate marks the whole point missing
    xyz[2, 3, 2] = np.inf
    expected = xyz.copy()
    expected[~np.isfinite(expected).all(axis=2)] = np.nan
    return xyz, expected


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------
# Round trips


def test_tiff_round_trip_keeps_nan(tmp_path):
    xyz, expected = organized_cloud()
    expected[3, 4] = np.nan
    xyz[3, 4] = 0.0
    path = write_organized_tiff(tmp_path / "000.tiff", expected)
    stored = tifffile.imread(path)
    assert stored.dtype == np.float32
    assert (stored[np.isnan(expected).any(axis=2)] == 0).all()
    back = read_organized(path)
    assert back.dtype == np.float32
    assert back.shape == (4, 5, 3)
    np.testing.assert_array_equal(back, expected)


def test_tiff_missing_markers_become_nan(tmp_path):
    xyz, expected = organized_cloud()
    xyz[3, 1] = 0.0  # MVTec background
    expected[3, 1] = np.nan
    xyz[3, 2] = (0.0, 0.0, 0.5)  # a zero coordinate alone is a valid point
    expected[3, 2] = (0.0, 0.0, 0.5)
    tifffile.imwrite(tmp_path / "a.tif", xyz.astype(np.float64), photometric="rgb")
    back = read_organized(tmp_path / "a.tif")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, expected)
    points = read_points(tmp_path / "a.tif")
    np.testing.assert_array_equal(
        points, expected.reshape(-1, 3)[~np.isnan(expected).any(2).ravel()]
    )


def test_npy_organized_round_trip(tmp_path):
    xyz, expected = organized_cloud()
    xyz[3, 3] = 0.0
    expected[3, 3] = np.nan
    np.save(tmp_path / "a.npy", xyz.astype(np.float64))
    np.testing.assert_array_equal(read_organized(tmp_path / "a.npy"), expected)
    atomic_save_npz(tmp_path / "b.npz", xyz=xyz, rgb=np.zeros((4, 5, 3), np.uint8))
    np.testing.assert_array_equal(read_organized(tmp_path / "b.npz"), expected)
    np.savez(tmp_path / "c.npz", cloud=xyz)
    np.testing.assert_array_equal(read_organized(tmp_path / "c.npz"), expected)


def test_npy_points_keep_zero_rows(tmp_path):
    points = np.array(
        [[0, 0, 0], [1, 2, 3], [np.nan, 0, 0], [4, np.inf, 5], [-1, -2, -3]], np.float64
    )
    np.save(tmp_path / "p.npy", points)
    back = read_points(tmp_path / "p.npy")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [[0, 0, 0], [1, 2, 3], [-1, -2, -3]])


def test_npy_organized_points_drop_zero(tmp_path):
    xyz, expected = organized_cloud()
    xyz[3, 3] = 0.0
    expected[3, 3] = np.nan
    np.save(tmp_path / "a.npy", xyz)
    flat = expected.reshape(-1, 3)
    np.testing.assert_array_equal(
        read_points(tmp_path / "a.npy"), flat[~np.isnan(flat).any(axis=1)]
    )


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
def test_pcd_organized_round_trip(tmp_path, encoding):
    xyz, expected = organized_cloud(3, 4)
    rgb = np.arange(12, dtype=np.uint32) * 65793
    path = write_pcd(
        tmp_path / "o.pcd",
        {
            "x": xyz[..., 0].ravel(),
            "y": xyz[..., 1].ravel(),
            "z": xyz[..., 2].ravel(),
            "rgb": rgb,
        },
        width=4,
        height=3,
        encoding=encoding,
    )
    back = read_organized(path)
    assert back.shape == (3, 4, 3)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, expected)
    flat = expected.reshape(-1, 3)
    np.testing.assert_array_equal(read_points(path), flat[~np.isnan(flat).any(axis=1)])


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
def test_pcd_written_by_pypcd4(tmp_path, encoding):
    pypcd4 = pytest.importorskip("pypcd4")
    rng = np.random.default_rng(1)
    points = rng.uniform(-5, 5, (50, 3)).astype(np.float32)
    cloud = pypcd4.PointCloud.from_xyz_points(points)
    cloud.save(tmp_path / "p.pcd", encoding=pypcd4.Encoding(encoding))
    back = read_points(tmp_path / "p.pcd")
    # pypcd4 writes ascii floats with 10 decimals, so they differ from the float32
    # values by up to 5e-11 before rounding back to float32.
    np.testing.assert_allclose(back, points, rtol=0, atol=1e-6)
    if encoding != "ascii":
        np.testing.assert_array_equal(back, points)


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
def test_pcd_header_variants(tmp_path, encoding):
    rng = np.random.default_rng(2)
    x, y, z = rng.uniform(-1, 1, (3, 6)).astype(np.float32)
    padding = rng.integers(0, 255, (6, 4)).astype(np.uint8)
    rgba = rng.integers(0, 2**32 - 1, 6).astype(np.uint32)
    expected = np.column_stack([x, y, z])

    # VERSION .5 without VIEWPOINT, as in the PCL bunny files.
    path = write_pcd(
        tmp_path / "v5.pcd",
        {"x": x, "y": y, "z": z},
        width=6,
        encoding=encoding,
        version=".5",
        viewpoint=False,
    )
    np.testing.assert_array_equal(read_points(path), expected)

    # CRLF line ends, and runs of spaces between the ascii columns.
    path = write_pcd(
        tmp_path / "crlf.pcd",
        {"x": x, "y": y, "z": z},
        width=6,
        encoding=encoding,
        newline="\r\n",
        separator="        ",
    )
    np.testing.assert_array_equal(read_points(path), expected)

    # Two padding fields "_" with COUNT 4, an rgba field, and x after other fields.
    path = write_pcd(
        tmp_path / "padding.pcd",
        {"rgba": rgba, "x": x, "_": padding, "y": y, "z": z, "pad2": padding},
        width=6,
        encoding=encoding,
    )
    raw = path.read_bytes()
    assert b"FIELDS rgba x _ y z pad2" in raw
    path.write_bytes(raw.replace(b"FIELDS rgba x _ y z pad2", b"FIELDS rgba x _ y z _"))
    np.testing.assert_array_equal(read_points(path), expected)


@pytest.mark.parametrize("text", [True, False])
def test_ply_round_trip(tmp_path, text):
    plyfile = pytest.importorskip("plyfile")
    vertex = np.array(
        [
            (0.0, 0.0, 0.0, 1.0),
            (1.5, -2.0, 3.25, 0.5),
            (np.nan, 1.0, 1.0, 0.0),
            (4.0, 5.0, 6.0, 0.0),
        ],
        dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")],
    )
    element = plyfile.PlyElement.describe(vertex, "vertex")
    plyfile.PlyData([element], text=text).write(str(tmp_path / "v.ply"))
    back = read_points(tmp_path / "v.ply")
    np.testing.assert_array_equal(back, [[0, 0, 0], [1.5, -2, 3.25], [4, 5, 6]])


def test_png_rgb_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_rgb(write_png(tmp_path / "c.png", rgb)), rgb)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    back = read_rgb(write_png(tmp_path / "g.png", grey))
    assert back.shape == (7, 9, 3)
    for channel in range(3):
        np.testing.assert_array_equal(back[..., channel], grey)
    rgba = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)
    np.testing.assert_array_equal(
        read_rgb(write_png(tmp_path / "a.png", rgba)), rgba[..., :3]
    )


def test_mask_defect_ids_are_true(tmp_path):
    ids = np.array([[0, 253, 254], [255, 0, 1]], np.uint8)
    expected = ids > 0
    np.testing.assert_array_equal(
        read_mask(write_png(tmp_path / "m.png", ids)), expected
    )
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 1, 1] = 7  # green only
    colour[1, 2, 2] = 255
    back = read_mask(write_png(tmp_path / "c.png", colour))
    np.testing.assert_array_equal(back, [[False, True, False], [False, False, True]])
    alpha = np.zeros((2, 3, 4), np.uint8)
    alpha[..., 3] = 255  # opaque black: alpha alone marks no defect
    alpha[1, 1, 0] = 9
    back = read_mask(write_png(tmp_path / "a.png", alpha))
    np.testing.assert_array_equal(back, [[False, False, False], [False, True, False]])
    boolean = np.array([[True, False], [False, True]])
    stored = write_png(tmp_path / "b.png", boolean)
    assert np.asarray(Image.open(stored)).tolist() == [[255, 0], [0, 255]]
    np.testing.assert_array_equal(read_mask(stored), boolean)
    deep = np.array([[0, 300], [65535, 0]], np.uint16)
    np.testing.assert_array_equal(
        read_mask(write_png(tmp_path / "d.png", deep)), deep > 0
    )


def test_flatten_organized_scatters_back():
    _, expected = organized_cloud(5, 6)
    expected = expected.astype(np.float64)
    points, flat_index = flatten_organized(expected)
    assert points.dtype == np.float32
    assert flat_index.dtype == np.intp
    assert len(points) == 30 - 3
    values = points.sum(axis=1)
    scattered = np.full(30, np.nan)
    scattered[flat_index] = values
    reference = expected.reshape(-1, 3).sum(axis=1)
    np.testing.assert_allclose(scattered, reference, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    nan_share=st.floats(0, 1),
)
def test_flatten_organized_property(height, width, seed, nan_share):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(height, width, 3)).astype(np.float32)
    xyz[rng.random((height, width)) < nan_share] = np.nan
    points, flat_index = flatten_organized(xyz)
    valid = [
        i for i in range(height * width) if not np.isnan(xyz.reshape(-1, 3)[i]).any()
    ]
    assert flat_index.tolist() == valid
    np.testing.assert_array_equal(points, xyz.reshape(-1, 3)[valid])


# ---------------------------------------------------------------------------------------
# Real PCL scans

PCL_DATA = {
    "table_scene_mug_stereo_textured.pcd": ((480, 640), 209280),
    "correspondence_grouping/milk_cartoon_all_small_clorox.pcd": ((480, 640), 241407),
    "pairwise/capture0001.pcd": ((480, 640), 249647),
    "pairwise/capture0002.pcd": ((480, 640), 249931),
    "correspondence_grouping/milk.pcd": (None, 12575),
    "template_alignment/object_template_0.pcd": (None, 1397),
    "min_cut_segmentation_tutorial.pcd": (None, 9311),
    "region_growing_tutorial.pcd": (None, 108104),
    "room_scan1.pcd": (None, 112586),
}
PCL_TEST = {
    "bun0.pcd": 397,
    "bunny.pcd": 397,
    "bun01.pcd": 200,
    "bun4.pcd": 361,
    "milk.pcd": 13704,
    "cturtle.pcd": 167198,
}


@pytest.mark.parametrize("name", sorted(PCL_DATA))
def test_pcl_data_counts(pcl_data, name):
    shape, n_finite = PCL_DATA[name]
    path = pcl_data / name
    points = read_points(path)
    assert points.shape == (n_finite, 3)
    assert points.dtype == np.float32
    if shape is None:
        with pytest.raises(ValueError, match=f"{path.name}.*read_points"):
            read_organized(path)
        return
    xyz = read_organized(path)
    assert xyz.shape == (*shape, 3)
    valid = ~np.isnan(xyz).any(axis=2)
    assert int(valid.sum()) == n_finite
    # A missing point is NaN in all three coordinates.
    assert np.isnan(xyz[~valid]).all()
    np.testing.assert_array_equal(xyz[valid], points)


@pytest.mark.parametrize("name", sorted(PCL_TEST))
def test_pcl_test_counts(pcl_test, name):
    points = read_points(pcl_test / name)
    assert points.shape == (PCL_TEST[name], 3)


def test_real_pcd_match_open3d(pcl_data, pcl_test):
    o3d = pytest.importorskip("open3d")
    files = sorted(pcl_data.parent.rglob("*.pcd")) + sorted(
        pcl_test.parent.rglob("*.pcd")
    )
    assert len(files) == len(PCL_DATA) + len(PCL_TEST)
    for path in files:
        ours = read_points(path)
        theirs = np.asarray(o3d.io.read_point_cloud(str(path)).points)
        theirs = theirs[np.isfinite(theirs).all(axis=1)]
        # Open3D 0.20 keeps ascii values in double precision, so compare after
        # rounding its values to float32. Binary files agree in float64 as well.
        np.testing.assert_array_equal(
            ours, theirs.astype(np.float32), err_msg=str(path)
        )
        if b"DATA ascii" not in path.read_bytes()[:1000]:
            np.testing.assert_array_equal(
                ours.astype(np.float64), theirs, err_msg=str(path)
            )


# ---------------------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path):
    for reader in (read_organized, read_points, read_rgb, read_mask):
        with pytest.raises(FileNotFoundError, match="nope.tiff"):
            reader(tmp_path / "nope.tiff")


def test_unknown_extension(tmp_path):
    path = tmp_path / "cloud.xyz"
    path.write_text("1 2 3\n")
    with pytest.raises(
        ValueError, match=r"unknown extension '\.xyz'.*\.tiff, \.tif, \.pcd"
    ):
        read_organized(path)
    with pytest.raises(ValueError, match=r"Supported extensions: .*\.ply"):
        read_points(path)
    with pytest.raises(ValueError, match=r"Supported extensions: \.png"):
        read_rgb(path)
    with pytest.raises(ValueError, match=r"Supported extensions: \.png"):
        read_mask(path)


def test_path_type():
    with pytest.raises(
        TypeError, match="path must be a str or os.PathLike, but got int"
    ):
        read_points(3)


def test_folder_is_not_a_file(tmp_path):
    folder = tmp_path / "a.pcd"
    folder.mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        read_points(folder)


def _cut(source: Path, target: Path, keep: float = 0.5) -> Path:
    raw = source.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    target.write_bytes(raw[:n])
    return target


@pytest.mark.parametrize(
    "name",
    ["table_scene_mug_stereo_textured.pcd", "min_cut_segmentation_tutorial.pcd"],
)
@pytest.mark.parametrize("keep", [0.5, 0.99, 300])
def test_truncated_real_pcd(pcl_data, tmp_path, name, keep):
    cut = _cut(pcl_data / name, tmp_path / name, keep)
    with pytest.raises(
        ValueError, match=f"{name} is truncated or not a valid PCD file"
    ):
        read_points(cut)


def test_truncated_binary_pcd(tmp_path):
    xyz, _ = organized_cloud(3, 4)
    columns = {
        "x": xyz[..., 0].ravel(),
        "y": xyz[..., 1].ravel(),
        "z": xyz[..., 2].ravel(),
    }
    path = write_pcd(tmp_path / "b.pcd", columns, width=4, height=3, encoding="binary")
    cut = _cut(path, tmp_path / "cut.pcd", len(path.read_bytes()) - 5)
    with pytest.raises(
        ValueError, match="truncated or not a valid PCD.*binary data has"
    ):
        read_organized(cut)


def test_corrupt_compressed_pcd(tmp_path):
    xyz, _ = organized_cloud(30, 40)
    columns = {
        "x": xyz[..., 0].ravel(),
        "y": xyz[..., 1].ravel(),
        "z": xyz[..., 2].ravel(),
    }
    path = write_pcd(
        tmp_path / "c.pcd", columns, width=40, height=30, encoding="binary_compressed"
    )
    raw = bytearray(path.read_bytes())
    start = (
        raw.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n") + 8
    )
    raw[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="c.pcd is truncated or not a valid PCD file"):
        read_points(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"hello world\n", "no DATA line"),
        (
            b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nPOINTS 3\nDATA ascii\n",
            "POINTS 3 differs from WIDTH x HEIGHT",
        ),
        (
            b"FIELDS x y\nSIZE 4 4\nTYPE F F\nWIDTH 1\nDATA ascii\n1 2\n",
            "has no 'z' field",
        ),
        (
            b"FIELDS x y z\nSIZE 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n1 2 3\n",
            "different lengths",
        ),
        (b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA lzma\n", "unknown DATA"),
        (
            b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nDATA ascii\n1 2 3\n4 5\n",
            "found 5 of the 6 values",
        ),
        (
            b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n1 two 3\n",
            "non-numeric",
        ),
        (
            b"FIELDS x y z\nSIZE 3 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n1 2 3\n",
            "unknown TYPE F SIZE 3",
        ),
        (b"FIELDS x y z\nTYPE F F F\nWIDTH 1\nDATA ascii\n1 2 3\n", "no SIZE line"),
    ],
)
def test_invalid_pcd_header(tmp_path, header, message):
    path = tmp_path / "bad.pcd"
    path.write_bytes(header)
    with pytest.raises(ValueError, match=message):
        read_points(path)


def test_truncated_tiff(tmp_path):
    _, expected = organized_cloud(40, 50)
    path = write_organized_tiff(tmp_path / "full.tiff", expected)
    for keep in (0.5, 100, 3):
        cut = _cut(path, tmp_path / "cut.tiff", keep)
        with pytest.raises(
            ValueError, match="cut.tiff is truncated or not a valid TIFF"
        ):
            read_organized(cut)


def test_tiff_wrong_shape(tmp_path):
    tifffile.imwrite(
        tmp_path / "four.tiff",
        np.ones((5, 6, 4), np.float32),
        photometric="minisblack",
        planarconfig="contig",
    )
    with pytest.raises(ValueError, match=r"shape \(5, 6, 4\).*\(H, W, 3\)"):
        read_organized(tmp_path / "four.tiff")
    tifffile.imwrite(tmp_path / "flat.tiff", np.ones((5, 6), np.float32))
    with pytest.raises(ValueError, match=r"shape \(5, 6\)"):
        read_points(tmp_path / "flat.tiff")


def test_npy_wrong_shape(tmp_path):
    np.save(tmp_path / "four.npy", np.ones((5, 6, 4)))
    with pytest.raises(ValueError, match=r"shape \(5, 6, 4\)"):
        read_organized(tmp_path / "four.npy")
    with pytest.raises(ValueError, match=r"shape \(5, 6, 4\).*\(N, 3\) or \(H, W, 3\)"):
        read_points(tmp_path / "four.npy")
    np.save(tmp_path / "flat.npy", np.ones(6))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        read_organized(tmp_path / "flat.npy")
    np.save(tmp_path / "points.npy", np.ones((6, 3)))
    with pytest.raises(
        ValueError, match=r"points.npy contains an unorganized.*read_points"
    ):
        read_organized(tmp_path / "points.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match="dtype <U1"):
        read_points(tmp_path / "text.npy")


def test_npz_key_choice(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones((2, 2, 3)), b=np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"\['a', 'b'\] and none is named 'xyz'"):
        read_organized(tmp_path / "two.npz")


def test_npy_pickle_rejected(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy contains an object array"):
        read_points(tmp_path / "obj.npy")


def test_truncated_npy_npz(tmp_path):
    xyz, _ = organized_cloud(20, 20)
    np.save(tmp_path / "a.npy", xyz)
    np.savez(tmp_path / "a.npz", xyz=xyz)
    for name, kind in (("a.npy", "NPY"), ("a.npz", "NPZ")):
        for keep in (0.5, 60):
            cut = _cut(tmp_path / name, tmp_path / f"cut{Path(name).suffix}", keep)
            with pytest.raises(
                ValueError, match=f"truncated or not a valid {kind} file"
            ):
                read_organized(cut)


def test_truncated_png(tmp_path, mvtec_root):
    source = mvtec_root / "tire" / "test" / "cut" / "rgb" / "000.png"
    for keep in (0.5, 30):
        cut = _cut(source, tmp_path / "cut.png", keep)
        with pytest.raises(
            ValueError, match="cut.png is truncated or not a valid image"
        ):
            read_rgb(cut)
        with pytest.raises(
            ValueError, match="cut.png is truncated or not a valid image"
        ):
            read_mask(cut)


def test_truncated_ply(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    vertex = np.zeros(100, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(
        str(tmp_path / "v.ply")
    )
    cut = _cut(tmp_path / "v.ply", tmp_path / "cut.ply", 0.6)
    with pytest.raises(ValueError, match="cut.ply is truncated or not a valid PLY"):
        read_points(cut)
    face_only = tmp_path / "f.ply"
    face_only.write_bytes(
        b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int "
        b"vertex_indices\nend_header\n"
    )
    with pytest.raises(ValueError, match="f.ply has no vertex element"):
        read_points(face_only)


def test_missing_optional_readers(tmp_path, monkeypatch):
    xyz, _ = organized_cloud(3, 4)
    columns = {
        "x": xyz[..., 0].ravel(),
        "y": xyz[..., 1].ravel(),
        "z": xyz[..., 2].ravel(),
    }
    path = write_pcd(tmp_path / "b.pcd", columns, width=4, height=3, encoding="binary")
    (tmp_path / "v.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    monkeypatch.setitem(sys.modules, "pypcd4", None)
    monkeypatch.setitem(sys.modules, "plyfile", None)
    with pytest.raises(ImportError, match=r"'pypcd4'.*pip install \"zal3d\[io\]\""):
        read_organized(path)
    with pytest.raises(ImportError, match=r"'plyfile'.*pip install \"zal3d\[io\]\""):
        read_points(tmp_path / "v.ply")


# ---------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_writers_write_content(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "a.txt", "line\r\nnext\n")
    assert (tmp_path / "a.txt").read_bytes() == b"line\r\nnext\n"
    path = atomic_save_npz(tmp_path / "arrays.npz", a=np.arange(3), b=np.eye(2))
    assert path == tmp_path / "arrays.npz"
    with np.load(path, allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["a"], np.arange(3))
        np.testing.assert_array_equal(stored["b"], np.eye(2))
    assert listing(tmp_path) == ["a.bin", "a.txt", "arrays.npz"]


def test_atomic_overwrite_keeps_mode(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o640


def test_atomic_new_file_follows_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old content")

    def interrupt(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(zio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_npz(path, a=np.arange(10))
    monkeypatch.undo()
    assert path.read_bytes() == b"old content"
    assert listing(tmp_path) == ["model.npz"]

    with (
        pytest.raises(RuntimeError, match="disk full"),
        zio._atomic_open(path) as stream,
    ):
        stream.write(b"half of the ")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old content"
    assert listing(tmp_path) == ["model.npz"]

    def fail(source, target):
        raise OSError("rename failed")

    monkeypatch.setattr(zio.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write_png(path, np.zeros((2, 2), np.uint8))
    assert path.read_bytes() == b"old content"
    assert listing(tmp_path) == ["model.npz"]


def test_killed_process_leaves_old_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    script = textwrap.dedent(
        f"""
        import os
        from zal3d_core import io
        # The process dies after writing and syncing, just before the rename.
        io.os.replace = lambda source, target: os._exit(7)
        io.atomic_write_text({str(path)!r}, "new content that must not appear")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, timeout=120
    )
    assert result.returncode == 7
    assert path.read_text() == "old"
    leftovers = [name for name in listing(tmp_path) if name != "result.json"]
    # Only a temporary file under its own hidden name can remain.
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".result.json.")
    assert leftovers[0].endswith(".tmp")


def test_atomic_write_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*missing does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "a.bin", b"x")
    with pytest.raises(TypeError, match="data must be bytes.*got str"):
        atomic_write_bytes(tmp_path / "a.bin", "text")
    with pytest.raises(TypeError, match="text must be a str, but got bytes"):
        atomic_write_text(tmp_path / "a.txt", b"x")
    with pytest.raises(ValueError, match="at least one array"):
        atomic_save_npz(tmp_path / "a.npz")
    with pytest.raises(TypeError, match="array 'meta' has dtype object"):
        atomic_save_npz(tmp_path / "a.npz", meta=np.array([{}, 1], dtype=object))
    with pytest.raises(ValueError, match=r"xyz must have shape \(H, W, 3\)"):
        write_organized_tiff(tmp_path / "a.tiff", np.zeros((4, 3)))
    with pytest.raises(
        TypeError, match="must have dtype bool, uint8 or uint16.*float64"
    ):
        write_png(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(
        TypeError, match=r"shape \(2, 2, 3\) must have dtype bool, uint8"
    ):
        write_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint16))
    with pytest.raises(ValueError, match=r"got \(2, 2, 2\)"):
        write_png(tmp_path / "a.png", np.zeros((2, 2, 2), np.uint8))
    assert listing(tmp_path) == []
