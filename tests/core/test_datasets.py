"""Tests of zal3d_core.datasets: walking MVTec 3D-AD folders and loading samples."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zal3d_core.datasets import MVTec3D, Sample, SampleRecord
from zal3d_core.io import write_organized_tiff, write_png

TIRE_COUNTS = {
    ("train", "good"): 20,
    ("validation", "good"): 5,
    ("test", "good"): 25,
    ("test", "cut"): 27,
    ("test", "hole"): 27,
    ("test", "contamination"): 28,
    ("test", "combined"): 5,
}


def make_sample(
    folder: Path, number: str, *, shape=(6, 8), gt=None, seed=0, xyz=True, rgb=True
) -> dict:
    """Write the files of one sample under ``folder`` and return the arrays written."""
    rng = np.random.default_rng(seed)
    height, width = shape
    cloud = rng.uniform(0.1, 1.0, (height, width, 3)).astype(np.float32)
    cloud[0, :2] = np.nan  # background, stored as zeros
    colour = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    written = {}
    if xyz:
        (folder / "xyz").mkdir(parents=True, exist_ok=True)
        write_organized_tiff(folder / "xyz" / f"{number}.tiff", cloud)
        written["xyz"] = cloud
    if rgb:
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        write_png(folder / "rgb" / f"{number}.png", colour)
        written["rgb"] = colour
    if gt is not None:
        (folder / "gt").mkdir(parents=True, exist_ok=True)
        write_png(folder / "gt" / f"{number}.png", gt)
        written["gt"] = gt
    return written


@pytest.fixture
def widget_root(tmp_path) -> Path:
    """A small dataset: class "widget" with train/good, test/good and test/crack."""
    root = tmp_path / "mvtec"
    widget = root / "widget"
    for number in ("0", "2", "10"):
        make_sample(widget / "train" / "good", number, seed=int(number))
    for number in ("000", "001"):
        make_sample(widget / "test" / "good", number, gt=np.zeros((6, 8), np.uint8))
    crack = np.zeros((6, 8), np.uint8)
    crack[2:4, 3:6] = 254
    for number in ("000", "001", "002"):
        make_sample(widget / "test" / "crack", number, gt=crack, seed=5)
    (root / "notes.txt").write_text("not a class")
    (root / "empty_folder").mkdir()
    return root


# ---------------------------------------------------------------------------------------
# Synthetic dataset


def test_walk_classes_splits_defects(widget_root):
    dataset = MVTec3D(widget_root)
    assert dataset.classes == ["widget"]
    assert dataset.splits("widget") == ["train", "test"]
    assert dataset.defect_types("widget", "test") == ["crack", "good"]
    assert dataset.defect_types("widget", "train") == ["good"]


def test_samples_sorted_by_defect_then_number(widget_root):
    dataset = MVTec3D(widget_root)
    names = [r.name for r in dataset.samples("widget", "test")]
    assert names == [
        "test/crack/000",
        "test/crack/001",
        "test/crack/002",
        "test/good/000",
        "test/good/001",
    ]
    train = [r.number for r in dataset.samples("widget", "train")]
    assert train == ["0", "2", "10"]
    crack_only = dataset.samples("widget", "test", defects="crack")
    assert [r.defect for r in crack_only] == ["crack"] * 3
    assert len(dataset.samples("widget", "test", defects=["good", "crack"])) == 5


def test_records_hold_paths_only(widget_root):
    record = MVTec3D(widget_root).samples("widget", "test", defects="crack")[1]
    assert isinstance(record, SampleRecord)
    base = widget_root / "widget" / "test" / "crack"
    assert record.xyz_path == base / "xyz" / "001.tiff"
    assert record.rgb_path == base / "rgb" / "001.png"
    assert record.gt_path == base / "gt" / "001.png"
    assert record.label == 1
    assert record.available() == ("xyz", "rgb", "gt")


def test_load_defective_sample(widget_root):
    record = MVTec3D(widget_root).samples("widget", "test", defects="crack")[0]
    sample = record.load()
    assert isinstance(sample, Sample)
    assert sample.xyz.dtype == np.float32
    assert sample.xyz.shape == (6, 8, 3)
    assert np.isnan(sample.xyz[0, :2]).all()
    assert not np.isnan(sample.xyz[1:]).any()
    np.testing.assert_array_equal(sample.valid, ~np.isnan(sample.xyz).any(axis=2))
    assert sample.valid.sum() == 6 * 8 - 2
    assert sample.rgb.dtype == np.uint8
    assert sample.gt.dtype == np.bool_
    expected = np.zeros((6, 8), bool)
    expected[2:4, 3:6] = True
    np.testing.assert_array_equal(sample.gt, expected)
    assert sample.label == 1
    assert (sample.class_name, sample.split, sample.defect) == (
        "widget",
        "test",
        "crack",
    )
    assert sample.name == "test/crack/000"
    assert sample.path == record.xyz_path
    assert sample.shape == (6, 8)


def test_load_values_match_files(widget_root):
    folder = widget_root / "widget" / "test" / "good"
    written = make_sample(folder, "005", gt=np.zeros((6, 8), np.uint8), seed=42)
    record = MVTec3D(widget_root).samples("widget", "test", defects="good")[-1]
    assert record.number == "005"
    sample = record.load()
    np.testing.assert_array_equal(sample.xyz, written["xyz"])
    np.testing.assert_array_equal(sample.rgb, written["rgb"])
    assert not sample.gt.any()
    assert sample.label == 0


def test_good_training_sample_gets_empty_mask(widget_root):
    record = MVTec3D(widget_root).samples("widget", "train")[0]
    assert record.gt_path is None
    sample = record.load()
    assert sample.gt.shape == (6, 8)
    assert sample.gt.dtype == np.bool_
    assert not sample.gt.any()
    gt_only = record.load(("gt",))
    assert gt_only.xyz is None
    assert gt_only.rgb is None
    assert gt_only.gt.shape == (6, 8)
    assert not gt_only.gt.any()
    assert gt_only.path == record.xyz_path


def test_subset_modalities(widget_root):
    dataset = MVTec3D(widget_root, modalities=("rgb", "gt"))
    sample = dataset.samples("widget", "test")[0].load()
    assert sample.xyz is None
    assert sample.rgb.shape == (6, 8, 3)
    assert sample.path.suffix == ".png"
    with pytest.raises(ValueError, match="has no xyz loaded"):
        _ = sample.valid
    override = dataset.samples("widget", "test", modalities=("xyz",))[0].load()
    assert override.rgb is None
    assert override.gt is None
    assert override.xyz.shape == (6, 8, 3)


def test_iter_samples_is_lazy(widget_root):
    dataset = MVTec3D(widget_root)
    broken = widget_root / "widget" / "test" / "good" / "rgb" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    iterator = dataset.iter_samples("widget", "test")
    assert isinstance(iterator, types.GeneratorType)
    names = [next(iterator).name for _ in range(4)]
    assert names[-1] == "test/good/000"
    with pytest.raises(ValueError, match="001.png is truncated or not a valid image"):
        next(iterator)


def test_missing_xyz_for_some_samples(widget_root):
    (widget_root / "widget" / "test" / "crack" / "xyz" / "002.tiff").unlink()
    dataset = MVTec3D(widget_root)
    with pytest.raises(
        FileNotFoundError,
        match=r"test/crack/002 of class 'widget' has no xyz file: .*002\.tiff does not "
        r"exist\. Modalities that can be loaded: rgb, gt\. .*modalities=\('rgb', 'gt'\)",
    ):
        dataset.samples("widget", "test")
    assert len(dataset.samples("widget", "test", defects="good")) == 2
    record = dataset.samples("widget", "test", modalities=("rgb", "gt"))[2]
    with pytest.raises(FileNotFoundError, match="002.tiff does not exist"):
        record.load(("xyz", "rgb"))


def test_missing_gt_of_defect(widget_root):
    (widget_root / "widget" / "test" / "crack" / "gt" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"test/crack/001 .* has no gt file"):
        MVTec3D(widget_root).samples("widget", "test")


def test_gt_size_mismatch(widget_root):
    folder = widget_root / "widget" / "test" / "crack"
    write_png(folder / "gt" / "002.png", np.zeros((5, 8), np.uint8))
    record = MVTec3D(widget_root).samples("widget", "test", defects="crack")[2]
    with pytest.raises(
        ValueError,
        match=r"gt of shape \(5, 8\) differs from the xyz "
        r"shape \(6, 8\).*002\.png",
    ):
        record.load()
    with pytest.raises(
        ValueError,
        match=r"gt of shape \(5, 8\) differs from the rgb "
        r"shape \(6, 8\)",
    ):
        record.load(("rgb", "gt"))


def test_xyz_rgb_size_mismatch(widget_root):
    folder = widget_root / "widget" / "test" / "crack"
    write_png(folder / "rgb" / "000.png", np.zeros((6, 9, 3), np.uint8))
    record = MVTec3D(widget_root).samples("widget", "test", defects="crack")[0]
    with pytest.raises(
        ValueError,
        match=r"xyz of shape \(6, 8, 3\) and rgb of shape "
        r"\(6, 9, 3\) differ",
    ):
        record.load()


def test_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder not found: .*absent"):
        MVTec3D(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="must be a folder, but .*file.txt is a file"):
        MVTec3D(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    (empty / "bagel" / "images").mkdir(parents=True)
    with pytest.raises(
        ValueError, match=r"contains no class folders.*found \['bagel'\]"
    ):
        MVTec3D(empty)
    with pytest.raises(TypeError, match="root must be a str or os.PathLike"):
        MVTec3D(3)


def test_name_errors(widget_root):
    dataset = MVTec3D(widget_root)
    with pytest.raises(
        ValueError, match="Unknown class 'bagel'.*Known classes: widget"
    ):
        dataset.samples("bagel")
    with pytest.raises(ValueError, match="Unknown split 'validation'.*train, test"):
        dataset.samples("widget", "validation")
    with pytest.raises(
        ValueError, match=r"Unknown defect types \['hole'\].*crack, good"
    ):
        dataset.samples("widget", "test", defects=["hole"])


def test_modality_errors(widget_root):
    with pytest.raises(
        ValueError,
        match=r"distinct names from \('xyz', 'rgb', 'gt'\), "
        r"but got \('depth',\)",
    ):
        MVTec3D(widget_root, modalities=("depth",))
    with pytest.raises(ValueError, match=r"non-empty.*got \(\)"):
        MVTec3D(widget_root, modalities=())
    with pytest.raises(ValueError, match="distinct"):
        MVTec3D(widget_root, modalities=("rgb", "rgb"))
    with pytest.raises(
        TypeError, match=r"got the str 'xyz'. Pass a tuple such as \('xyz',\)"
    ):
        MVTec3D(widget_root, modalities="xyz")
    record = MVTec3D(widget_root).samples("widget", "test")[0]
    with pytest.raises(TypeError, match="sequence of modality names"):
        record.load(modalities=5)


# ---------------------------------------------------------------------------------------
# Real MVTec 3D-AD tire class (rgb and gt only)


def test_tire_default_modalities_fail(mvtec_root):
    dataset = MVTec3D(mvtec_root)
    assert dataset.classes == ["tire"]
    assert dataset.splits("tire") == ["train", "validation", "test"]
    message = (
        r"has no xyz file: .*tire/test/\w+/xyz/\d+\.tiff does not exist \(112 samples "
        r"of this split lack it\).*modalities=\('rgb', 'gt'\)"
    )
    with pytest.raises(FileNotFoundError, match=message):
        dataset.samples("tire", "test")
    with pytest.raises(FileNotFoundError, match=r"train/good/000 .* has no xyz file"):
        next(dataset.iter_samples("tire", "train"))


def test_tire_counts(mvtec_root):
    dataset = MVTec3D(mvtec_root, modalities=("rgb", "gt"))
    assert dataset.defect_types("tire", "test") == [
        "combined",
        "contamination",
        "cut",
        "good",
        "hole",
    ]
    for (split, defect), count in TIRE_COUNTS.items():
        records = dataset.samples("tire", split, defects=defect)
        assert len(records) == count, (split, defect)
        assert [r.number for r in records] == [f"{i:03d}" for i in range(count)]
    assert len(dataset.samples("tire", "test")) == 112


def test_tire_masks_from_defect_ids(mvtec_root):
    ids = json.loads((mvtec_root / "tire" / "class_ids.json").read_text())
    id_of = {name: int(value) for value, name in ids.items()}
    dataset = MVTec3D(mvtec_root, modalities=("gt",))
    for record in dataset.samples("tire", "test"):
        raw = np.asarray(Image.open(record.gt_path))
        sample = record.load()
        assert sample.gt.dtype == np.bool_
        assert sample.gt.shape == (800, 600)
        np.testing.assert_array_equal(sample.gt, raw > 0)
        values = set(np.unique(raw).tolist())
        if record.defect == "good":
            assert values == {0}
            assert sample.label == 0
        elif record.defect == "combined":
            assert values <= {0, id_of["cut"], id_of["hole"], id_of["contamination"]}
            assert sample.gt.any()
        else:
            assert values == {0, id_of[record.defect]}, record.name
            assert sample.label == 1


def test_tire_rgb_and_training_masks(mvtec_root):
    dataset = MVTec3D(mvtec_root, modalities=("rgb", "gt"))
    sample = dataset.samples("tire", "test", defects="hole")[3].load()
    assert sample.name == "test/hole/003"
    assert sample.rgb.shape == (800, 600, 3)
    assert sample.rgb.dtype == np.uint8
    assert sample.path == mvtec_root / "tire" / "test" / "hole" / "rgb" / "003.png"
    assert 0 < sample.gt.mean() < 0.01
    train = next(dataset.iter_samples("tire", "validation"))
    assert train.gt.shape == (800, 600)
    assert not train.gt.any()
    assert train.label == 0
