"""Tests of the demo dataset generator: layout, masks, realism, determinism, inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage, stats

from zal3d_core.demo import (
    DEFAULT_SCANS,
    DEFECT_TYPES,
    DEMO_CLASSES,
    MANIFEST_NAME,
    MASK_THRESHOLD,
    generate_demo_dataset,
    generate_real_geometry_dataset,
    render_demo_sample,
    render_scan_sample,
    sample_seed,
)
from zal3d_core.demo.defects import place_defect
from zal3d_core.demo.render import Camera, cast_rays, draw_plane_pose
from zal3d_core.demo.shapes import build_procedural, grid_step_for
from zal3d_core.io import read_points

SMALL = {"n_train": 2, "n_validation": 1, "n_test_good": 1, "n_test_per_defect": 1}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _plane_fit(xyz: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit z = a x + b y + c to the given pixels; return the unit normal and the rms."""
    points = xyz[pixels].astype(np.float64)
    design = np.column_stack([points[:, 0], points[:, 1], np.ones(len(points))])
    coefficients, *_ = np.linalg.lstsq(design, points[:, 2], rcond=None)
    residual = points[:, 2] - design @ coefficients
    normal = np.array([-coefficients[0], -coefficients[1], 1.0])
    return normal / np.linalg.norm(normal), float(residual.std())


def _check_twin(sample, twin) -> None:
    """Check the mask rule of a defective sample against its defect-free twin."""
    moved = np.abs(sample.depth - twin.depth) > MASK_THRESHOLD
    missing = np.isnan(sample.xyz[..., 0])
    twin_missing = np.isnan(twin.xyz[..., 0])

    # Every pixel whose depth moved, or whose measurement the defect removed or
    # restored, is a defect pixel.
    assert not (moved & ~sample.gt).any()
    assert not ((missing != twin_missing) & ~sample.gt).any()
    # A defect pixel moved, or is missing in one of the two captures: a change of
    # measurability can hide under a random dropout that both captures share.
    assert not (sample.gt & ~moved & ~missing & ~twin_missing).any()

    # Far from any change of the geometry the two captures are identical bit for bit.
    touched = ndimage.binary_dilation(sample.depth != twin.depth, iterations=2)
    untouched = ~touched & ~sample.gt
    assert untouched.sum() > 0.9 * untouched.size
    np.testing.assert_array_equal(sample.xyz[untouched], twin.xyz[untouched])
    np.testing.assert_array_equal(sample.rgb[untouched], twin.rgb[untouched])
    assert not twin.gt.any()


# --------------------------------------------------------------------------------------
# Layout


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo_dataset(
        root, classes=["gear", "panel"], size=64, seed=3, **SMALL
    )


def test_layout_matches_mvtec(small_dataset):
    root = small_dataset
    assert sorted(p.name for p in root.iterdir()) == [
        "demo_manifest.json",
        "gear",
        "panel",
    ]
    for class_name in ("gear", "panel"):
        folder = root / class_name
        assert sorted(p.name for p in folder.iterdir()) == [
            "test",
            "train",
            "validation",
        ]
        for split, count in (("train", 2), ("validation", 1)):
            assert sorted(p.name for p in (folder / split).iterdir()) == ["good"]
            good = folder / split / "good"
            assert sorted(p.name for p in good.iterdir()) == ["rgb", "xyz"]
            names = [f"{i:03d}" for i in range(count)]
            assert sorted(p.stem for p in (good / "xyz").glob("*.tiff")) == names
            assert sorted(p.stem for p in (good / "rgb").glob("*.png")) == names
        test = folder / "test"
        assert sorted(p.name for p in test.iterdir()) == sorted(["good", *DEFECT_TYPES])
        for category in test.iterdir():
            assert sorted(p.name for p in category.iterdir()) == ["gt", "rgb", "xyz"]
            assert [p.name for p in (category / "xyz").iterdir()] == ["000.tiff"]
            assert [p.name for p in (category / "rgb").iterdir()] == ["000.png"]
            assert [p.name for p in (category / "gt").iterdir()] == ["000.png"]


def test_file_formats(small_dataset):
    for path in small_dataset.rglob("xyz/*.tiff"):
        xyz = tifffile.imread(path)
        assert xyz.dtype == np.float32
        assert xyz.shape == (64, 64, 3)
        assert not np.isnan(xyz).any()
        zero = (xyz == 0).all(axis=2)
        # A missing point is zero in all three coordinates, never in only some.
        assert not ((xyz == 0).any(axis=2) & ~zero).any()
        assert 0 < zero.sum() < 0.2 * zero.size
        z = xyz[..., 2][~zero]
        assert z.min() > 0.3
        assert z.max() < 0.5
    for path in small_dataset.rglob("rgb/*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB"
            assert image.size == (64, 64)
    for path in small_dataset.rglob("gt/*.png"):
        with Image.open(path) as image:
            assert image.mode == "L"
            assert image.size == (64, 64)
            gt = np.asarray(image)
        assert set(np.unique(gt)) <= {0, 255}
        if path.parts[-3] == "good":
            assert not gt.any()
        else:
            assert gt.any()


def test_manifest_matches_files(small_dataset):
    manifest = json.loads((small_dataset / MANIFEST_NAME).read_text())
    assert manifest["generator"] == "zal3d_core.demo"
    assert manifest["complete"] is True
    assert manifest["seed"] == 3
    assert manifest["parameters"]["size"] == 64
    assert manifest["parameters"]["defect_types"] == list(DEFECT_TYPES)
    assert len(manifest["samples"]) == 2 * (2 + 1 + 1 + len(DEFECT_TYPES))
    written = {str(p.relative_to(small_dataset)) for p in small_dataset.rglob("*.*")}
    listed = {name for sample in manifest["samples"] for name in sample["files"]}
    assert written - {MANIFEST_NAME} == listed
    for sample in manifest["samples"]:
        if sample["split"] != "test":
            assert len(sample["files"]) == 2
            continue
        with Image.open(small_dataset / sample["files"][2]) as image:
            gt = np.asarray(image) > 0
        assert sample["defect_pixels"] == int(gt.sum())


def test_manifest_seed_renders_sample_again(small_dataset):
    manifest = json.loads((small_dataset / MANIFEST_NAME).read_text())
    entry = next(s for s in manifest["samples"] if s["defect"] == "crack")
    sample = render_demo_sample(
        entry["class"], defect_type="crack", size=64, seed=entry["seed"]
    )
    xyz = tifffile.imread(small_dataset / entry["files"][0])
    np.testing.assert_array_equal(xyz, np.nan_to_num(sample.xyz, nan=0.0))
    with Image.open(small_dataset / entry["files"][1]) as image:
        np.testing.assert_array_equal(np.asarray(image), sample.rgb)
    with Image.open(small_dataset / entry["files"][2]) as image:
        np.testing.assert_array_equal(np.asarray(image) > 0, sample.gt)


def test_dataset_reader_walks_demo(small_dataset):
    datasets = pytest.importorskip("zal3d_core.datasets")
    dataset = datasets.MVTec3D(small_dataset)
    assert dataset.classes == ["gear", "panel"]
    assert dataset.defect_types("gear") == sorted(["good", *DEFECT_TYPES])
    assert len(dataset.samples("gear", "train")) == 2
    assert len(dataset.samples("gear", "validation")) == 1
    records = dataset.samples("panel", "test")
    assert len(records) == 1 + len(DEFECT_TYPES)
    for record in records:
        sample = record.load()
        assert sample.xyz.shape == (64, 64, 3)
        assert sample.label == (0 if record.defect == "good" else 1)
        assert sample.gt.any() == (record.defect != "good")
        raw = tifffile.imread(record.xyz_path)
        np.testing.assert_array_equal(
            np.isnan(sample.xyz).any(axis=2), (raw == 0).all(axis=2)
        )


# --------------------------------------------------------------------------------------
# Defect masks


@pytest.mark.parametrize("class_name", DEMO_CLASSES)
def test_masks_mark_changed_geometry(class_name):
    for index, kind in enumerate(DEFECT_TYPES):
        seed = 100 + index
        sample = render_demo_sample(class_name, defect_type=kind, size=96, seed=seed)
        twin = render_demo_sample(
            class_name, defect_type=kind, size=96, seed=seed, apply_defect=False
        )
        _check_twin(sample, twin)

        share = sample.gt.mean()
        assert 0.001 <= share <= 0.03, (kind, share)
        assert not (sample.gt & ~sample.object_mask).any()
        measured = ~np.isnan(sample.xyz[sample.gt][:, 0])
        if kind != "hole":
            assert measured.mean() > 0.7, (kind, measured.mean())


@pytest.mark.parametrize("size", [32, 48])
def test_defects_fit_small_images(size):
    for class_name in DEMO_CLASSES:
        for kind in DEFECT_TYPES:
            sample = render_demo_sample(class_name, defect_type=kind, size=size, seed=5)
            assert sample.xyz.shape == (size, size, 3)
            assert 0.001 <= sample.gt.mean() <= 0.03, (class_name, kind)
            assert not (sample.gt & ~sample.object_mask).any()


@settings(max_examples=8, deadline=None)
@given(
    class_name=st.sampled_from(DEMO_CLASSES),
    kind=st.sampled_from(DEFECT_TYPES),
    seed=st.integers(0, 2**40),
)
def test_mask_rule_any_seed(class_name, kind, seed):
    sample = render_demo_sample(class_name, defect_type=kind, size=64, seed=seed)
    twin = render_demo_sample(
        class_name, defect_type=kind, size=64, seed=seed, apply_defect=False
    )
    _check_twin(sample, twin)
    assert sample.gt.any()
    assert not (sample.gt & ~sample.object_mask).any()


def test_hole_removes_points_or_deepens():
    for seed in range(4):
        sample = render_demo_sample("plate", defect_type="hole", size=96, seed=seed)
        twin = render_demo_sample(
            "plate", defect_type="hole", size=96, seed=seed, apply_defect=False
        )
        gt = sample.gt
        deeper = sample.depth[gt] - twin.depth[gt]
        missing = np.isnan(sample.xyz[gt][:, 0])
        # A blind hole is 2 to 5 mm deep and a through hole reaches the plane 5 mm down,
        # so most hole pixels lie that much deeper or are not measured. The others see
        # the hole's wall, or lost their light to it.
        assert ((deeper > 1.9e-3) | missing).mean() > 0.8
        assert np.median(deeper) > 1.9e-3
        assert sample.defect_parameters["radius_mm"] >= 2.5


def test_contamination_changes_colour():
    sample = render_demo_sample("dome", defect_type="contamination", size=128, seed=7)
    twin = render_demo_sample(
        "dome", defect_type="contamination", size=128, seed=7, apply_defect=False
    )
    difference = np.abs(sample.rgb.astype(int) - twin.rgb.astype(int)).sum(axis=2)
    assert np.median(difference[sample.gt]) > 60
    assert (difference[~sample.gt] > 60).mean() < 0.002


def test_dent_depth_and_bump_height():
    for kind, sign in (("dent", 1.0), ("bump", -1.0)):
        sample = render_demo_sample("panel", defect_type=kind, size=128, seed=11)
        twin = render_demo_sample(
            "panel", defect_type=kind, size=128, seed=11, apply_defect=False
        )
        change = sign * (sample.depth - twin.depth)[sample.gt]
        amplitude = abs(sample.defect_parameters["depth_mm"]) * 1e-3
        # A dent lies farther from the camera and a bump nearer. The peak change equals
        # the drawn amplitude within 15 %, because the surface moves along its normal.
        assert change.min() > 0
        assert change.max() == pytest.approx(amplitude, rel=0.15)


def test_partial_recast_equals_full():
    rng = np.random.default_rng(9)
    camera = Camera.for_size(80)
    pose = draw_plane_pose(rng)
    model = build_procedural("ring", rng, grid_step_for(camera.pixel_pitch))
    clean = cast_rays(model.grid, camera, pose)
    for kind in DEFECT_TYPES:
        defect = place_defect(
            kind,
            model.grid,
            rng,
            camera.pixel_pitch,
            80 * 80,
            model.appearance.colours[1],
        )
        grid = defect.apply(model.grid)
        full = cast_rays(grid, camera, pose)
        partial = cast_rays(
            grid, camera, pose, base=clean, changed_bounds=defect.bounds(model.grid)
        )
        np.testing.assert_allclose(partial.depth, full.depth, rtol=0, atol=1e-9)
        np.testing.assert_allclose(partial.normal, full.normal, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(partial.lit, full.lit)
        np.testing.assert_array_equal(partial.labels, full.labels)


def test_partial_recast_updates_shadows():
    # A 25 mm post on the plane casts a shadow about 8 mm long outside its own box,
    # onto pixels whose view rays never pass over the box.
    rng = np.random.default_rng(3)
    camera = Camera.for_size(128)
    pose = draw_plane_pose(rng)
    model = build_procedural("plate", rng, grid_step_for(camera.pixel_pitch))
    clean = cast_rays(model.grid, camera, pose)
    heights = model.grid.heights.copy()
    first, last = 10, 40
    heights[first:last, first:last] = 25e-3
    grid = dataclasses.replace(model.grid, heights=heights)
    x0, y0, step = grid.x0, grid.y0, grid.step
    box = (x0 + first * step, x0 + last * step, y0 + first * step, y0 + last * step)
    full = cast_rays(grid, camera, pose)
    partial = cast_rays(grid, camera, pose, base=clean, changed_bounds=box)
    shadowed = full.lit != clean.lit
    assert shadowed.sum() > 50
    np.testing.assert_array_equal(partial.lit, full.lit)
    np.testing.assert_allclose(partial.depth, full.depth, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------
# Geometry and sensor model


def test_camera_frame_and_sensor_noise():
    sample = render_demo_sample("plate", size=128, seed=5)
    valid = ~np.isnan(sample.xyz[..., 0])
    background = valid & ~ndimage.binary_dilation(sample.object_mask, iterations=3)
    normal, rms = _plane_fit(sample.xyz, background)
    tilt = np.degrees(np.arccos(abs(normal[2])))
    assert 0.9 < tilt < 4.1
    assert sample.pose["plane_tilt_deg"] == pytest.approx(tilt, abs=0.1)
    # Depth noise of about 0.1 mm on the flat background.
    assert 0.05e-3 < rms < 0.2e-3
    z = sample.xyz[..., 2][valid]
    assert z.min() > 0.38
    assert z.max() < 0.43
    extent = sample.xyz[sample.object_mask & valid][:, :2]
    size = extent.max(axis=0) - extent.min(axis=0)
    assert 0.05 < size.max() < 0.10


def test_missing_points_at_walls():
    sample = render_demo_sample("gear", size=128, seed=2)
    missing = np.isnan(sample.xyz[..., 0])
    outline = sample.object_mask ^ ndimage.binary_erosion(
        sample.object_mask, iterations=2
    )
    interior = ndimage.binary_erosion(sample.object_mask, iterations=4)
    assert missing[outline].mean() > 5 * missing[interior].mean()
    assert missing[outline].mean() > 0.1


def _object_heights(sample) -> np.ndarray:
    """Return the heights above the fitted background plane of the object's points."""
    valid = ~np.isnan(sample.xyz[..., 0])
    background = valid & ~ndimage.binary_dilation(sample.object_mask, iterations=3)
    points = sample.xyz[valid & sample.object_mask].astype(np.float64)
    normal, _ = _plane_fit(sample.xyz, background)
    anchor = sample.xyz[background].astype(np.float64).mean(axis=0)
    return np.abs((points - anchor) @ normal)


def test_classes_differ():
    heights = {
        (name, seed): _object_heights(render_demo_sample(name, size=96, seed=seed))
        for name in DEMO_CLASSES
        for seed in range(3)
    }
    keys = list(heights)
    for key in keys:
        others = [other for other in keys if other != key]
        distances = [
            stats.wasserstein_distance(heights[key], heights[o]) for o in others
        ]
        nearest = others[int(np.argmin(distances))]
        assert nearest[0] == key[0], (key, nearest)
        # The height distributions of two samples of one class lie within about a
        # millimetre of each other (Wasserstein-1); those of two classes lie farther.
        for other, distance in zip(others, distances):
            if other[0] == key[0]:
                assert distance < 1.2e-3, (key, other)
            else:
                assert distance > 1.2e-3, (key, other)


def test_samples_of_class_differ():
    first = render_demo_sample("cylinder", size=64, seed=0)
    second = render_demo_sample("cylinder", size=64, seed=1)
    assert first.pose != second.pose
    assert not np.array_equal(first.object_mask, second.object_mask)


# --------------------------------------------------------------------------------------
# Determinism and regeneration


def test_generation_is_byte_identical(tmp_path):
    options = dict(classes=["ring"], size=48, seed=21, **SMALL)
    first = _files(generate_demo_dataset(tmp_path / "a", **options))
    second = _files(generate_demo_dataset(tmp_path / "b", **options))
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    other = _files(generate_demo_dataset(tmp_path / "c", **{**options, "seed": 22}))
    assert (
        other["ring/train/good/xyz/000.tiff"] != first["ring/train/good/xyz/000.tiff"]
    )


def test_sample_independent_of_other_classes(tmp_path):
    alone = _files(
        generate_demo_dataset(tmp_path / "a", classes="dome", size=48, **SMALL)
    )
    both = _files(
        generate_demo_dataset(
            tmp_path / "b", classes=["cylinder", "dome"], size=48, **SMALL
        )
    )
    for name, content in alone.items():
        if name != MANIFEST_NAME:
            assert both[name] == content, name


def test_regenerates_own_folder(tmp_path):
    root = tmp_path / "data"
    generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    note = root / "notes.txt"
    note.write_text("mine")
    generate_demo_dataset(
        root,
        classes="dome",
        size=48,
        n_train=1,
        n_validation=0,
        n_test_good=1,
        n_test_per_defect=0,
    )
    assert not (root / "gear").exists()
    assert note.read_text() == "mine"
    assert sorted(p.name for p in (root / "dome" / "test").iterdir()) == ["good"]
    assert not (root / "dome" / "validation").exists()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert {s["class"] for s in manifest["samples"]} == {"dome"}


def test_interrupted_run_can_be_regenerated(tmp_path, monkeypatch):
    from zal3d_core.demo import dataset

    root = tmp_path / "data"
    calls = []

    def failing_write(root_, job, sample):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(root_, job, sample)

    original = dataset._write_sample
    monkeypatch.setattr(dataset, "_write_sample", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is False
    monkeypatch.setattr(dataset, "_write_sample", original)
    generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is True


def test_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    root = generate_demo_dataset(
        tmp_path / "data",
        classes="dome",
        size=48,
        progress=True,
        n_train=1,
        n_validation=0,
        n_test_good=1,
        n_test_per_defect=0,
    )
    assert (root / "dome" / "test" / "good" / "gt" / "000.png").is_file()
    assert "demo dataset" in capsys.readouterr().err


def test_rejects_foreign_folder(tmp_path):
    root = tmp_path / "user"
    root.mkdir()
    (root / "scan.tiff").write_bytes(b"precious")
    with pytest.raises(ValueError, match="non-empty folder without demo_manifest.json"):
        generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    assert (root / "scan.tiff").read_bytes() == b"precious"

    (root / MANIFEST_NAME).write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(ValueError, match="was not written by zal3d_core.demo"):
        generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    (root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not a readable demo manifest"):
        generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    assert (root / "scan.tiff").read_bytes() == b"precious"


def test_rejects_manifest_pointing_outside(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "keep.txt"
    outside.write_text("keep")
    manifest = {"generator": "zal3d_core.demo", "samples": [{"files": ["../keep.txt"]}]}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lies outside the folder"):
        generate_demo_dataset(root, classes="gear", size=48, **SMALL)
    assert outside.read_text() == "keep"


def test_rejects_file_as_root(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        generate_demo_dataset(path, classes="gear", size=48, **SMALL)


# --------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"classes": ["gear", "teapot"]},
            ValueError,
            "Unknown class 'teapot' in classes. Known classes: plate, dome",
        ),
        ({"classes": []}, ValueError, "classes must name at least one of"),
        ({"classes": 3}, TypeError, "classes must be a str, a sequence of str or None"),
        ({"classes": [1]}, TypeError, "classes must contain str"),
        (
            {"defect_types": ["scratch"]},
            ValueError,
            "Unknown defect type 'scratch' in defect_types. Known defect types: dent, bump, hole, cut, crack, contamination",
        ),
        ({"size": 31}, ValueError, "size must be at least 32 pixels, but got 31"),
        ({"size": 64.5}, TypeError, "size must be an int"),
        ({"n_train": -1}, ValueError, "n_train must be a count >= 0, but got -1"),
        (
            {"n_test_per_defect": -2},
            ValueError,
            "n_test_per_defect must be a count >= 0",
        ),
        ({"n_train": "3"}, TypeError, "n_train must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"progress": "yes"}, TypeError, "progress must be a bool"),
        (
            {"n_train": 0, "n_validation": 0, "n_test_good": 0, "n_test_per_defect": 0},
            ValueError,
            "Nothing to generate",
        ),
    ],
)
def test_generate_rejects_bad_input(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        generate_demo_dataset(tmp_path / "data", **{"classes": "gear", **options})
    assert not (tmp_path / "data").exists()


def test_generate_rejects_bad_root():
    with pytest.raises(
        TypeError, match="root must be a str or os.PathLike, but got int"
    ):
        generate_demo_dataset(5)


def test_render_rejects_bad_input():
    with pytest.raises(
        ValueError, match="Unknown class_name 'teapot'. Known demo classes: plate"
    ):
        render_demo_sample("teapot")
    with pytest.raises(
        ValueError, match="Unknown defect_type 'scratch'. Known defect types: dent"
    ):
        render_demo_sample("gear", defect_type="scratch")
    with pytest.raises(
        TypeError, match="defect_type must be a str or None, but got int"
    ):
        render_demo_sample("gear", defect_type=1)
    with pytest.raises(ValueError, match="size must be at least 32 pixels, but got 16"):
        render_demo_sample("gear", size=16)
    with pytest.raises(
        ValueError, match="points must contain at least 50 valid points, but got 10"
    ):
        render_scan_sample(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        render_scan_sample(np.zeros((100, 2)))
    line = np.column_stack([np.linspace(0, 1, 60), np.zeros(60), np.zeros(60)])
    with pytest.raises(
        ValueError, match="points must span a surface, but they lie on one line"
    ):
        render_scan_sample(line)
    rng = np.random.default_rng(0)
    sheet = np.column_stack([rng.random(100), rng.random(100), 1e-3 * rng.random(100)])
    with pytest.raises(
        ValueError, match="points are nearly flat: their thickness is 0.072 % of"
    ):
        render_scan_sample(sheet)


def test_sample_seeds_distinct():
    seeds = [
        sample_seed(0, name, split, category, index)
        for name in DEMO_CLASSES
        for split, category in [("train", "good"), ("test", "good"), ("test", "dent")]
        for index in range(20)
    ]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert sample_seed(0, "gear", "test", "dent", 3) == sample_seed(
        0, "gear", "test", "dent", 3
    )
    assert sample_seed(0, "gear", "test", "dent", 3) != sample_seed(
        1, "gear", "test", "dent", 3
    )


def test_render_accepts_good_and_generator():
    good = render_demo_sample(
        "gear", defect_type="good", size=48, seed=np.random.default_rng(4)
    )
    assert good.defect_type is None
    assert not good.gt.any()
    assert good.defect_parameters == {}


# --------------------------------------------------------------------------------------
# Real scanned geometry


def test_real_geometry_dataset(tmp_path, pcl_test):
    sources = {"bunny": pcl_test / "bunny.pcd", "milk": pcl_test / "milk.pcd"}
    root = generate_real_geometry_dataset(
        tmp_path / "real",
        sources,
        n_train=1,
        n_validation=1,
        n_test_good=1,
        n_test_per_defect=1,
        defect_types=["dent", "hole", "crack"],
        size=64,
        seed=2,
    )

    assert sorted(p.name for p in root.iterdir()) == [
        "bunny",
        "demo_manifest.json",
        "milk",
    ]
    assert sorted(p.name for p in (root / "milk" / "test").iterdir()) == [
        "crack",
        "dent",
        "good",
        "hole",
    ]

    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "real_geometry"
    assert manifest["classes"]["milk"]["n_points"] == 13704
    for entry in manifest["samples"]:
        if entry["split"] == "test" and entry["defect"] != "good":
            assert entry["defect_pixels"] > 0

    # The manifest's seed and colour index render the sample again from the scan.
    entry = next(
        s
        for s in manifest["samples"]
        if s["class"] == "bunny" and s["defect"] == "hole"
    )
    sample = render_scan_sample(
        read_points(sources["bunny"]),
        defect_type="hole",
        size=64,
        seed=entry["seed"],
        colour_index=manifest["classes"]["bunny"]["colour_index"],
    )
    xyz = tifffile.imread(root / entry["files"][0])
    np.testing.assert_array_equal(xyz, np.nan_to_num(sample.xyz, nan=0.0))


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_scan_masks_mark_changed_geometry(pcl_test, kind):
    points = read_points(pcl_test / "milk.pcd")
    sample = render_scan_sample(points, defect_type=kind, size=96, seed=31)
    twin = render_scan_sample(
        points, defect_type=kind, size=96, seed=31, apply_defect=False
    )
    _check_twin(sample, twin)
    assert 0.001 <= sample.gt.mean() <= 0.03
    assert not (sample.gt & ~sample.object_mask).any()


def test_scan_is_scaled_to_target(pcl_test):
    for name in ("bunny.pcd", "cturtle.pcd"):
        sample = render_scan_sample(read_points(pcl_test / name), size=96, seed=1)
        valid = ~np.isnan(sample.xyz[..., 0]) & sample.object_mask
        extent = sample.xyz[valid][:, :2]
        size = extent.max(axis=0) - extent.min(axis=0)
        assert 0.05 < size.max() < 0.10, (name, size)


def test_scan_from_array():
    rng = np.random.default_rng(0)
    u, v = rng.uniform(-1, 1, size=(2, 3000))
    keep = u**2 + v**2 < 1
    cap = np.column_stack(
        [u[keep], v[keep], 0.3 * np.sqrt(1 - u[keep] ** 2 - v[keep] ** 2)]
    )
    sample = render_scan_sample(cap * 5.0, defect_type="bump", size=64, seed=3)
    assert sample.gt.any()
    assert sample.object_mask.mean() > 0.1


def test_default_sources(tmp_path, pcl_test):
    root = generate_real_geometry_dataset(
        tmp_path / "real",
        n_train=1,
        n_validation=0,
        n_test_good=0,
        n_test_per_defect=1,
        defect_types=["dent"],
        size=48,
    )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert classes == sorted(DEFAULT_SCANS)


def test_default_sources_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("ZAL3D_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(
        ValueError,
        match=r"No default scan found; tried .*nowhere.*bunny\.pcd.*Pass sources=",
    ):
        generate_real_geometry_dataset(tmp_path / "real", size=48)


@pytest.mark.parametrize(
    ("sources", "error", "message"),
    [
        ({}, ValueError, "sources must name at least one class"),
        ([("a", "b")], TypeError, "sources must be a mapping of class name"),
        (
            {"../up": np.zeros((60, 3))},
            ValueError,
            "Invalid class name '../up' in sources",
        ),
        ({"": np.zeros((60, 3))}, ValueError, "Invalid class name '' in sources"),
        (
            {"flat": np.zeros((20, 3))},
            ValueError,
            r"sources\['flat'\] must contain at least 50 valid points",
        ),
    ],
)
def test_real_geometry_rejects_bad_sources(tmp_path, sources, error, message):
    with pytest.raises(error, match=message):
        generate_real_geometry_dataset(tmp_path / "real", sources, size=48)


def test_real_geometry_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        generate_real_geometry_dataset(
            tmp_path / "real", {"x": tmp_path / "missing.pcd"}
        )
