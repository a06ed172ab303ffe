"""Bad files and folders for the readers, the writers and the dataset walker.

Every broken file is written here under tmp_path: empty, truncated, of another format,
with a wrong extension, folders where files are expected, and dataset trees with stray
files, hidden files, missing modalities and masks of another size.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from zal3d_core.datasets import MVTec3D
from zal3d_core.io import (
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_text,
    make_folder,
    read_mask,
    read_organized,
    read_points,
    read_rgb,
    write_organized_tiff,
    write_png,
)

READERS = (read_organized, read_points, read_rgb, read_mask)


def cloud(shape=(6, 8), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, (*shape, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Broken files, one table per reader


def _broken_files(folder: Path) -> dict[str, Path]:
    """Write one broken file per case and return their paths by case name."""
    good_tiff = folder / "good.tiff"
    tifffile.imwrite(good_tiff, cloud(), photometric="rgb")
    raw = good_tiff.read_bytes()
    png = folder / "grey.png"
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(png)
    files = {
        "empty tiff": folder / "empty.tiff",
        "truncated tiff": folder / "truncated.tiff",
        "png named tiff": folder / "png_named.tiff",
        "text named tiff": folder / "text.tiff",
        "empty npy": folder / "empty.npy",
        "empty pcd": folder / "empty.pcd",
        "empty png": folder / "empty.png",
        "truncated png": folder / "truncated.png",
        "tiff named png": folder / "tiff_named.png",
    }
    files["empty tiff"].write_bytes(b"")
    files["truncated tiff"].write_bytes(raw[: len(raw) // 2])
    files["png named tiff"].write_bytes(png.read_bytes())
    files["text named tiff"].write_text("x y z\n1 2 3\n")
    files["empty npy"].write_bytes(b"")
    files["empty pcd"].write_bytes(b"")
    files["empty png"].write_bytes(b"")
    files["truncated png"].write_bytes(png.read_bytes()[:40])
    files["tiff named png"].write_bytes(raw)
    return files


@pytest.mark.parametrize(
    "case, reader, message",
    [
        ("empty tiff", read_organized, r"empty\.tiff is truncated or not a valid TIFF"),
        (
            "truncated tiff",
            read_organized,
            r"truncated\.tiff is truncated or not a valid TIFF",
        ),
        (
            "png named tiff",
            read_organized,
            r"png_named\.tiff is .*not a valid TIFF.*PNG",
        ),
        (
            "text named tiff",
            read_points,
            r"text\.tiff is truncated or not a valid TIFF",
        ),
        ("empty npy", read_organized, r"empty\.npy is truncated or not a valid NPY"),
        ("empty pcd", read_points, r"empty\.pcd is truncated or not a valid PCD"),
        ("empty png", read_rgb, r"empty\.png is truncated or not a valid image"),
        (
            "truncated png",
            read_mask,
            r"truncated\.png is truncated or not a valid image",
        ),
        ("tiff named png", read_organized, r"unknown extension '\.png'"),
    ],
)
def test_broken_file_message(tmp_path, case, reader, message):
    path = _broken_files(tmp_path)[case]
    with pytest.raises(ValueError, match=message):
        reader(path)


def test_xyz_tiff_read_as_rgb_hints_read_organized(tmp_path):
    path = tmp_path / "000.tiff"
    write_organized_tiff(path, cloud())
    with pytest.raises(
        ValueError, match="if it is an xyz tiff, read it with read_organized"
    ):
        read_rgb(path)
    assert read_organized(path).shape == (6, 8, 3)


@pytest.mark.parametrize("reader", READERS)
def test_folder_and_missing_file(tmp_path, reader):
    folder = tmp_path / "scan.tiff"
    folder.mkdir()
    with pytest.raises(
        ValueError, match=r"scan\.tiff is not a regular file \(is it a folder\?\)"
    ):
        reader(folder)
    with pytest.raises(FileNotFoundError, match=r"File not found: .*absent\.tiff"):
        reader(tmp_path / "absent.tiff")


@pytest.mark.parametrize("reader", READERS)
def test_dangling_symlink_is_missing(tmp_path, reader):
    link = tmp_path / "link.tiff"
    os.symlink(tmp_path / "gone.tiff", link)
    with pytest.raises(FileNotFoundError, match=r"File not found: .*link\.tiff"):
        reader(link)


def test_npz_with_non_array_member(tmp_path):
    path = tmp_path / "notes.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not an array")
    for reader in (read_organized, read_points):
        with pytest.raises(
            ValueError, match="the member 'readme.txt' is not a .npy array"
        ):
            reader(path)


def test_object_arrays_are_not_unpickled(tmp_path):
    cloud = np.empty((4, 3), object)
    cloud[:] = 1.0
    np.save(tmp_path / "objects.npy", cloud, allow_pickle=True)
    np.savez(tmp_path / "objects.npz", xyz=cloud)
    for name in ("objects.npy", "objects.npz"):
        for reader in (read_organized, read_points):
            with pytest.raises(ValueError, match=r"contains an object array, which only "
                               r"pickle can load, and zal3d never unpickles files"):
                reader(tmp_path / name)


def test_npz_without_arrays(tmp_path):
    path = tmp_path / "nothing.npz"
    np.savez(path)
    with pytest.raises(
        ValueError, match=r"nothing\.npz is .*NPZ file \(the archive contains no arrays\)"
    ):
        read_organized(path)


def test_ply_with_impossible_vertex_count(tmp_path):
    path = tmp_path / "huge.ply"
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000000\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    )
    path.write_bytes(header.encode("ascii") + bytes(24))
    with pytest.raises(
        ValueError, match=r"huge\.ply is truncated or not a valid PLY file"
    ):
        read_points(path)


def test_ply_without_vertices(tmp_path):
    path = tmp_path / "faces.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement face 0\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    with pytest.raises(ValueError, match="has no vertex element with x, y and z"):
        read_points(path)


def test_unorganized_file_read_as_organized(tmp_path):
    path = tmp_path / "points.npy"
    np.save(path, np.random.default_rng(0).random((20, 3)))
    with pytest.raises(
        ValueError, match=r"unorganized cloud of shape \(20, 3\).*read_points"
    ):
        read_organized(path)
    assert read_points(path).shape == (20, 3)


@pytest.mark.parametrize(
    "array, message",
    [
        (
            np.zeros((6, 8), np.float32),
            r"shape \(6, 8\), but an xyz tiff must have shape",
        ),
        (np.zeros((6, 8, 4), np.float32), r"shape \(6, 8, 4\), but an xyz tiff"),
        (np.zeros((6, 8, 3), np.complex64), "dtype complex64, but coordinates must be"),
    ],
)
def test_tiff_of_wrong_channels(tmp_path, array, message):
    path = tmp_path / "scan.tiff"
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError, match=message):
        read_organized(path)


def test_grey_and_rgba_images_are_converted(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(grey)
    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((4, 5, 4), np.uint8)
    pixels[..., 0] = 9
    pixels[..., 3] = 0
    Image.fromarray(pixels).save(rgba)
    assert read_rgb(grey).shape == (4, 5, 3)
    assert (read_rgb(grey) == 7).all()
    assert read_rgb(rgba).shape == (4, 5, 3)
    assert (read_rgb(rgba)[..., 0] == 9).all()
    # Alpha is ignored: a transparent pixel with a red value still marks a defect.
    assert read_mask(rgba).all()


# ---------------------------------------------------------------------------------------
# Writers


def test_write_to_a_folder_path(tmp_path):
    folder = tmp_path / "out.png"
    folder.mkdir()
    with pytest.raises(
        IsADirectoryError, match=r"Cannot write .*out\.png: it is a folder"
    ):
        write_png(folder, np.zeros((4, 4), np.uint8))
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        atomic_write_bytes(folder, b"data")
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_write_below_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=r"results is a file, not a folder"):
        atomic_write_text(blocker / "table.csv", "a,b\n")
    with pytest.raises(FileNotFoundError, match="does not exist. Create it first"):
        atomic_save_npz(tmp_path / "missing" / "x.npz", a=np.zeros(2))
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="permission bits do not stop root from writing",
)
def test_write_into_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            write_png(folder / "x.png", np.zeros((4, 4), np.uint8))
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_unknown_text_encoding(tmp_path):
    with pytest.raises(
        ValueError, match="encoding 'no-such-codec' is not a known text encoding"
    ):
        atomic_write_text(tmp_path / "x.txt", "abc", encoding="no-such-codec")
    assert not (tmp_path / "x.txt").exists()


def test_tiff_beyond_float32_rejected(tmp_path):
    xyz = np.full((2, 2, 3), 1e39)
    with pytest.raises(
        ValueError, match=r"beyond the float32 range \(3\.4e38\) of the tiff"
    ):
        write_organized_tiff(tmp_path / "x.tiff", xyz)
    assert not (tmp_path / "x.tiff").exists()


def test_make_folder_errors(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(
        NotADirectoryError, match=r"--out .*blocker is a file, not a folder"
    ):
        make_folder(blocker, "--out")
    with pytest.raises(NotADirectoryError, match="part of the path is a file"):
        make_folder(blocker / "sub", "--out")
    with pytest.raises(TypeError, match="--out must be a str or os.PathLike"):
        make_folder(3, "--out")
    created = make_folder(tmp_path / "a" / "b", "--out")
    assert created.is_dir()


# ---------------------------------------------------------------------------------------
# Dataset folders


def write_sample(folder: Path, number: str, *, shape=(6, 8), gt=None, rgb=True):
    (folder / "xyz").mkdir(parents=True, exist_ok=True)
    write_organized_tiff(folder / "xyz" / f"{number}.tiff", cloud(shape))
    if rgb:
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        write_png(folder / "rgb" / f"{number}.png", np.zeros((*shape, 3), np.uint8))
    if gt is not None:
        (folder / "gt").mkdir(parents=True, exist_ok=True)
        write_png(folder / "gt" / f"{number}.png", gt)


@pytest.fixture
def dataset_root(tmp_path) -> Path:
    root = tmp_path / "data"
    for number in ("000", "001"):
        write_sample(root / "part" / "train" / "good", number)
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 2:5] = 255
    write_sample(root / "part" / "test" / "dent", "000", gt=mask)
    write_sample(root / "part" / "test" / "good", "000", gt=np.zeros((6, 8), np.uint8))
    return root


def test_stray_files_are_not_samples(dataset_root):
    xyz = dataset_root / "part" / "train" / "good" / "xyz"
    (xyz / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (xyz / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (xyz / "notes.txt").write_text("scanned on monday")
    (xyz / "._000.tiff").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (xyz / "002.tiff").mkdir()  # a folder with a sample-like name
    (dataset_root / ".DS_Store").write_bytes(b"x")
    (dataset_root / "part" / "test" / ".ipynb_checkpoints").mkdir()
    dataset = MVTec3D(dataset_root)
    records = dataset.samples("part", "train")
    assert [r.number for r in records] == ["000", "001"]
    assert dataset.defect_types("part", "test") == ["dent", "good"]
    assert records[0].load().xyz.shape == (6, 8, 3)


def test_missing_modality_names_the_file(dataset_root):
    (dataset_root / "part" / "test" / "dent" / "rgb" / "000.png").unlink()
    dataset = MVTec3D(dataset_root)
    with pytest.raises(
        FileNotFoundError,
        match=r"Sample test/dent/000 of class 'part' has no rgb file: .*rgb/000\.png does "
        r"not exist\. Modalities that can be loaded: xyz, gt",
    ):
        dataset.samples("part", "test")
    only_xyz = MVTec3D(dataset_root, modalities=("xyz", "gt"))
    assert len(only_xyz.samples("part", "test")) == 2


def test_gt_of_another_size(dataset_root):
    write_png(
        dataset_root / "part" / "test" / "dent" / "gt" / "000.png",
        np.zeros((3, 3), np.uint8),
    )
    record = MVTec3D(dataset_root).samples("part", "test", "dent")[0]
    with pytest.raises(
        ValueError, match=r"gt of shape \(3, 3\) differs from the xyz shape \(6, 8\)"
    ):
        record.load()


def test_rgb_of_another_size(dataset_root):
    write_png(
        dataset_root / "part" / "test" / "dent" / "rgb" / "000.png",
        np.zeros((5, 5, 3), np.uint8),
    )
    record = MVTec3D(dataset_root).samples("part", "test", "dent")[0]
    with pytest.raises(
        ValueError,
        match=r"xyz of shape \(6, 8, 3\) and rgb of shape \(5, 5, 3\) differ",
    ):
        record.load()


def test_grey_gt_and_rgba_gt_load_as_masks(dataset_root):
    gt_path = dataset_root / "part" / "test" / "dent" / "gt" / "000.png"
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[1, 2, 1] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(gt_path)
    gt = MVTec3D(dataset_root).samples("part", "test", "dent")[0].load().gt
    assert gt.dtype == np.bool_
    assert np.flatnonzero(gt).tolist() == [1 * 8 + 2]


def test_empty_class_and_split(tmp_path):
    root = tmp_path / "data"
    (root / "hollow" / "train" / "good").mkdir(parents=True)
    (root / "hollow" / "test").mkdir(parents=True)
    dataset = MVTec3D(root)
    assert dataset.samples("hollow", "train") == []
    assert dataset.samples("hollow", "test") == []
    with pytest.raises(
        ValueError, match=r"Unknown split 'validation' for class 'hollow'"
    ):
        dataset.samples("hollow", "validation")


def test_truncated_scan_in_dataset(dataset_root):
    path = dataset_root / "part" / "train" / "good" / "xyz" / "001.tiff"
    path.write_bytes(path.read_bytes()[:100])
    records = MVTec3D(dataset_root).samples("part", "train")
    records[0].load()
    with pytest.raises(ValueError, match=r"001\.tiff is truncated or not a valid TIFF"):
        records[1].load()
