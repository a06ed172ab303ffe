"""Bad input for scoring, anomaly maps, metrics, backends and model files.

Model files are damaged here in the ways a copy, an editor or another release can
damage them. Each must fail with a ValueError that names the file, never with a
KeyError, an AttributeError or an IndexError from deep inside the loader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings

import numpy as np
import pytest

from zal3d_core import (
    FPFHBackend,
    PatchFeatures,
    UndefinedMetricWarning,
    ZeroShotModel,
    anomaly_map,
    au_pro,
    auroc,
    image_score,
    nearest_neighbor_scores,
    pixel_auroc,
    register_backend,
)
from zal3d_core.datasets import Sample


class BlockMeanBackend:
    """Mean and spread of z per 4 x 4 block: a fast backend for model-file tests."""

    name = "errors-block-mean"
    feature_dim = 2

    def config(self):
        return {}

    def extract(self, sample):
        xyz = sample.xyz
        valid = ~np.isnan(xyz).any(axis=2)
        height, width = valid.shape
        z = np.where(valid, xyz[..., 2], 0.0)
        blocks = z.reshape(height // 4, 4, width // 4, 4).swapaxes(1, 2)
        blocks = blocks.reshape(-1, 16)
        features = np.stack([blocks.mean(1), blocks.std(1)], 1).astype(np.float32)
        return PatchFeatures(
            features=features,
            patch_valid=np.ones(len(features), bool),
            grid_shape=(height // 4, width // 4),
            valid=valid,
        )


register_backend(BlockMeanBackend.name, BlockMeanBackend)


def make_sample(seed: int, size: int = 16) -> Sample:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    z = 0.5 + 0.01 * rng.standard_normal((size, size)).astype(np.float32)
    xyz = np.stack([cols, rows, z], -1)
    return Sample(
        xyz=xyz,
        rgb=None,
        gt=np.zeros((size, size), bool),
        label=0,
        class_name="c",
        split="test",
        defect="good",
        name=f"test/good/{seed:03d}",
        path=None,
    )


@pytest.fixture
def model_file(tmp_path):
    model = ZeroShotModel(
        BlockMeanBackend.name,
        preprocess={"size": None, "remove_plane": False},
        coreset_ratio=0.5,
    )
    model.fit([make_sample(i) for i in range(3)])
    return model.save(tmp_path / "model.npz")


def rewrite(path, *, meta=None, arrays=None, raw_meta=None, fix_checksum=False):
    """Rewrite a model file with changed metadata or arrays."""
    with np.load(path, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files}
    metadata = json.loads(content["metadata"].tobytes())
    if meta:
        meta(metadata)
    if arrays:
        arrays(content)
    if fix_checksum and content["bank"].dtype.kind in "fiu":
        bank = np.ascontiguousarray(content["bank"], np.float32)
        metadata["bank_sha256"] = hashlib.sha256(bank.tobytes()).hexdigest()
    text = raw_meta if raw_meta is not None else json.dumps(metadata)
    content["metadata"] = np.frombuffer(text.encode(), np.uint8)
    np.savez(path, **content)
    return path


# ---------------------------------------------------------------------------------------
# Model files


def test_model_file_round_trip(model_file):
    model = ZeroShotModel.load(model_file)
    prediction = model.predict(make_sample(7))
    assert prediction.anomaly_map.shape == (16, 16)
    assert np.isfinite(prediction.image_score)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("coreset_ratio"), "its metadata lacks coreset_ratio"),
        (lambda m: m.pop("sigma"), "its metadata lacks sigma"),
        (lambda m: m.pop("backend"), "its metadata lacks backend"),
        (
            lambda m: m.update(backend=3),
            "metadata entry 'backend' must be str, but got int 3",
        ),
        (
            lambda m: m.update(sigma="4"),
            "metadata entry 'sigma' must be int or float, but got str '4'",
        ),
        (
            lambda m: m.update(n_reweight=True),
            "metadata entry 'n_reweight' must be int, but got bool",
        ),
        (
            lambda m: m.update(preprocess=[1]),
            "metadata entry 'preprocess' must be dict or null",
        ),
        (
            lambda m: m.update(backend_config=[1]),
            "metadata entry 'backend_config' must be dict or null",
        ),
        (
            lambda m: m.update(fit_info=[1]),
            "metadata entry 'fit_info' must be dict, but got list",
        ),
        (
            lambda m: m.update(distance_scale="x"),
            "metadata entry 'distance_scale' must be int or float",
        ),
        (
            lambda m: m.update(format_version=None),
            "has model format version None, but this zal3d",
        ),
        (
            lambda m: m.update(format="other"),
            "is not a zal3d model file .format 'other'.",
        ),
        (
            lambda m: m.update(bank_sha256="0"),
            "the memory bank checksum does not match",
        ),
    ],
)
def test_damaged_metadata(model_file, change, message):
    rewrite(model_file, meta=change)
    with pytest.raises(ValueError, match=message):
        ZeroShotModel.load(model_file)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(n_reweight=-1), "n_reweight must be >= 1, but got -1"),
        (lambda m: m.update(backend="nope"), "unknown backend 'nope'"),
        (
            lambda m: m.update(preprocess={"bogus": 1}),
            r"preprocess has unknown keys \['bogus'\]",
        ),
        (lambda m: m.update(preprocess={"size": "x"}), "size must be an int or a"),
        (
            lambda m: m.update(
                sigma=1e9, preprocess={"size": 16, "remove_plane": False}
            ),
            "sigma must be at most 4 times the larger side",
        ),
    ],
)
def test_invalid_settings_name_the_file(model_file, change, message):
    rewrite(model_file, meta=change)
    with pytest.raises(
        ValueError, match=rf"model\.npz has invalid settings: {message}"
    ):
        ZeroShotModel.load(model_file)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("[1, 2]", "has corrupted metadata: expected a JSON object, but got list"),
        ("{", "has corrupted metadata: Expecting property name"),
        ('"text"', "expected a JSON object, but got str"),
    ],
)
def test_metadata_not_an_object(model_file, raw, message):
    rewrite(model_file, raw_meta=raw)
    with pytest.raises(ValueError, match=message):
        ZeroShotModel.load(model_file)


@pytest.mark.parametrize(
    "bank, message",
    [
        (
            lambda b: b[0].copy(),
            r"memory bank must be a 2-D float array, but it has shape \(2,\)",
        ),
        (
            lambda b: np.array(["a", "b"]),
            "memory bank must be a 2-D float array, .* dtype <U1",
        ),
        (
            lambda b: b.astype(np.int32),
            "memory bank must be a 2-D float array, .* dtype int32",
        ),
    ],
)
def test_damaged_bank(model_file, bank, message):
    rewrite(
        model_file, arrays=lambda a: a.update(bank=bank(a["bank"])), fix_checksum=True
    )
    with pytest.raises(ValueError, match=message):
        ZeroShotModel.load(model_file)


def test_bank_with_nan_fails_at_prediction(model_file):
    def poison(arrays):
        bank = arrays["bank"].copy()
        bank[0, 0] = np.nan
        arrays["bank"] = bank

    rewrite(model_file, arrays=poison, fix_checksum=True)
    model = ZeroShotModel.load(model_file)
    with pytest.raises(
        ValueError, match="bank contains NaN or infinite values in 1 of"
    ):
        model.predict(make_sample(3))


def test_other_files_as_model(tmp_path, model_file):
    single = tmp_path / "array.npz"
    with open(single, "wb") as stream:
        np.save(stream, np.zeros(3))
    with pytest.raises(
        ValueError, match="it contains a single array, not an .npz archive"
    ):
        ZeroShotModel.load(single)
    with pytest.raises(IsADirectoryError, match=r"model file .* is a folder"):
        ZeroShotModel.load(tmp_path)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a valid zal3d model file"):
        ZeroShotModel.load(empty)
    state = rewrite(
        model_file, arrays=lambda a: a.update({"backend.weights": np.zeros(3)})
    )
    with pytest.raises(ValueError, match="holds learned backend weights, but backend"):
        ZeroShotModel.load(state)


def test_save_to_a_folder_or_below_a_file(tmp_path, model_file):
    model = ZeroShotModel.load(model_file)
    with pytest.raises(
        IsADirectoryError, match=r"Cannot save the model to .*: it is a folder"
    ):
        model.save(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(
        NotADirectoryError, match=r"model folder .*blocker is a file, not a folder"
    ):
        model.save(blocker / "model.npz")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"sigma": 65.0, "preprocess": {"size": 16}},
            ValueError,
            "sigma must be at most 4 times the larger side of the preprocessed "
            "samples, 64 pixels, but got 65.0",
        ),
        (
            {"preprocess": [("size", 16)]},
            TypeError,
            "preprocess must be a dict of preprocess_sample arguments, but got list",
        ),
        (
            {"preprocess": {"sizes": 16}},
            ValueError,
            r"preprocess has unknown keys \['sizes'\]",
        ),
        (
            {"preprocess": {"size": 0}},
            ValueError,
            "size must be >= 1 in each dimension",
        ),
        ({"coreset_n": 0}, ValueError, "coreset_n must be >= 1, but got 0"),
        ({"backend": 3}, TypeError, "backend must be a backend name or an object"),
    ],
)
def test_bad_model_settings(kwargs, error, message):
    backend = kwargs.pop("backend", BlockMeanBackend.name)
    with pytest.raises(error, match=message):
        ZeroShotModel(backend, **kwargs)


def test_coreset_larger_than_patches_keeps_all():
    model = ZeroShotModel(
        BlockMeanBackend.name,
        preprocess={"size": None, "remove_plane": False},
        coreset_n=10**6,
    )
    model.fit([make_sample(i) for i in range(2)])
    assert model.bank.shape == (32, 2)
    assert model.fit_info["n_bank"] == 32


def test_predict_before_fit():
    model = ZeroShotModel(
        BlockMeanBackend.name, preprocess={"size": None, "remove_plane": False}
    )
    with pytest.raises(RuntimeError, match="the model is not fitted; call fit"):
        model.predict(make_sample(0))


# ---------------------------------------------------------------------------------------
# FPFH backend


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"viewpoint": (0.0, np.nan, 0.0)}, ValueError, "viewpoint must be finite"),
        (
            {"viewpoint": (0.0, 0.0)},
            ValueError,
            r"viewpoint must have shape \(3,\), but got \(2,\)",
        ),
        ({"viewpoint": "origin"}, TypeError, "viewpoint must be a numeric array"),
        ({"normal_max_nn": 2}, ValueError, "normal_max_nn must be >= 3, but got 2"),
        ({"grid": 0}, ValueError, "grid must be >= 1, but got 0"),
        ({"search": "brute"}, ValueError, "search must be 'window' or 'tree'"),
        ({"fpfh_radius": -1.0}, ValueError, "fpfh_radius must be a finite number > 0"),
    ],
)
def test_fpfh_backend_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        FPFHBackend(**kwargs)


def test_fpfh_backend_inputs():
    backend = FPFHBackend(grid=4)
    with pytest.raises(
        ValueError, match=r"xyz must have shape \(H, W, 3\), but got \(16, 16\)"
    ):
        backend.extract(np.zeros((16, 16)))
    sample = make_sample(0)
    sparse = sample.xyz.copy()
    sparse[2:] = np.nan
    empty = dataclasses.replace(
        sample, xyz=sparse, gt=None, class_name="part", name="test/good/004"
    )
    with pytest.raises(
        ValueError,
        match="sample part test/good/004 has 32 valid points after preprocessing, fewer "
        "than normal_max_nn=40",
    ):
        FPFHBackend(grid=4, normal_max_nn=40).extract(empty)
    no_xyz = dataclasses.replace(sample, xyz=None, gt=None, class_name="part", name="x")
    with pytest.raises(ValueError, match="the fpfh backend needs the xyz modality"):
        backend.extract(no_xyz)


# ---------------------------------------------------------------------------------------
# Scoring


def test_reweighting_support_larger_than_bank():
    bank = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    queries = np.array([[0.1, 0.0], [2.0, 1.5]])
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries, bank, n_reweight=9, return_details=True
    )
    assert support.shape == (2, 3)
    assert support[1].tolist() == [1, 0, 2]
    assert nearest.tolist() == [0, 1]
    assert distances[1] == pytest.approx(1.8027756, abs=1e-7)
    assert scores[1] == pytest.approx(1.3838680, abs=1e-6)


@pytest.mark.parametrize(
    "queries, bank, error, message",
    [
        (
            np.full((2, 4), 1e39),
            np.zeros((3, 4)),
            ValueError,
            r"queries contains values up to 1e\+39 in magnitude, but at most 1e\+18",
        ),
        (
            np.zeros((2, 4)),
            np.full((3, 4), -1e200),
            ValueError,
            r"bank contains values up to 1e\+200",
        ),
        (
            np.zeros((2, 4)),
            np.zeros((0, 4)),
            ValueError,
            r"bank must have at least 1 row",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((3, 4)),
            ValueError,
            r"queries must have as many columns as bank \(4\)",
        ),
        (
            np.array([[np.nan, 0.0]]),
            np.zeros((3, 2)),
            ValueError,
            "queries contains NaN or infinite values in 1 of 1 rows",
        ),
        (
            np.zeros((2, 2)),
            np.array([[np.inf, 0.0]]),
            ValueError,
            "bank contains NaN or infinite values",
        ),
        (
            np.zeros(4),
            np.zeros((3, 4)),
            ValueError,
            r"queries must have shape \(N, D\)",
        ),
        (
            np.zeros((2, 2), complex),
            np.zeros((3, 2)),
            TypeError,
            "queries must be a numeric array",
        ),
        (
            "features",
            np.zeros((3, 2)),
            TypeError,
            "queries must be a numeric array, but got str",
        ),
    ],
)
def test_bad_scoring_inputs(queries, bank, error, message):
    with pytest.raises(error, match=message):
        nearest_neighbor_scores(queries, bank)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_reweight": 0}, ValueError, "n_reweight must be >= 1, but got 0"),
        (
            {"n_reweight": 1.5},
            TypeError,
            "n_reweight must be an int, but got float 1.5",
        ),
        ({"block_size": 0}, ValueError, "block_size must be >= 1, but got 0"),
        (
            {"return_details": "yes"},
            TypeError,
            "return_details must be a bool, but got str",
        ),
        ({"n_jobs": 0}, ValueError, "n_jobs must be a nonzero int or None, but got 0"),
    ],
)
def test_bad_scoring_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        nearest_neighbor_scores(np.zeros((2, 2)), np.ones((3, 2)), **kwargs)


def test_large_features_score_exactly():
    # Rows of norm ~3e19 would overflow float32 dot products; they are searched by the
    # float64 scan instead, with the same neighbours as the unscaled rows.
    rng = np.random.default_rng(0)
    bank = rng.uniform(-1.0, 1.0, (300, 1000))
    queries = rng.uniform(-1.0, 1.0, (20, 1000))
    _, reference_distance, reference_nearest, reference_support = (
        nearest_neighbor_scores(queries, bank, return_details=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores, distance, nearest, support = nearest_neighbor_scores(
            queries * 1e18, bank * 1e18, return_details=True
        )
    np.testing.assert_array_equal(nearest, reference_nearest)
    np.testing.assert_array_equal(support, reference_support)
    np.testing.assert_allclose(distance / 1e18, reference_distance, rtol=1e-12)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(np.float32),
        lambda a: a.tolist(),
        lambda a: np.asfortranarray(a),
        lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    ],
    ids=["float32", "list", "fortran", "strided"],
)
def test_scoring_layouts(convert):
    rng = np.random.default_rng(4)
    bank = rng.integers(-50, 50, (40, 6)).astype(np.float64)
    queries = rng.integers(-50, 50, (7, 6)).astype(np.float64)
    expected = nearest_neighbor_scores(queries, bank)
    np.testing.assert_array_equal(
        nearest_neighbor_scores(convert(queries), convert(bank)), expected
    )


def test_empty_queries_give_empty_scores():
    assert nearest_neighbor_scores(np.zeros((0, 3)), np.ones((2, 3))).shape == (0,)


# ---------------------------------------------------------------------------------------
# Anomaly maps and image scores


def test_sigma_limit():
    scores = np.arange(4.0)
    with pytest.raises(
        ValueError,
        match=r"sigma must be at most 4 times the larger side of image_shape "
        r"\(8, 6\), 32 pixels, but got 33.0",
    ):
        anomaly_map(scores, (2, 2), (8, 6), sigma=33.0)
    at_limit = anomaly_map(scores, (2, 2), (8, 6), sigma=32.0)
    assert np.isfinite(at_limit).all()
    assert np.ptp(at_limit) < 0.1 * np.ptp(scores)
    with pytest.raises(
        ValueError, match="sigma must be a finite number >= 0, but got nan"
    ):
        anomaly_map(scores, (2, 2), (8, 6), sigma=float("nan"))


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (
            (np.arange(5.0), (2, 2), (8, 8)),
            {},
            ValueError,
            r"patch_scores must have shape \(4,\) or \(2, 2\)",
        ),
        (
            (np.array([0.0, np.inf, 1.0, 2.0]), (2, 2), (8, 8)),
            {},
            ValueError,
            "patch_scores contains infinite values",
        ),
        (
            (np.arange(4.0), (2, 2), (8, 8), np.ones((8, 8), int)),
            {},
            TypeError,
            "valid must be a boolean array, but got dtype int64",
        ),
        (
            (np.arange(4.0), (2, 2), (8, 8), np.ones((8, 7), bool)),
            {},
            ValueError,
            r"valid must have shape \(8, 8\)",
        ),
        (
            (np.arange(4.0), (2, 2, 1), (8, 8)),
            {},
            TypeError,
            r"patch_grid must be a pair of ints",
        ),
        ((np.arange(4.0), (2, 2), (0, 8)), {}, ValueError, "image_shape must be >= 1"),
    ],
)
def test_bad_map_inputs(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        anomaly_map(*args, **kwargs)


def test_map_without_finite_scores_is_all_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="zal3d_core.scoring"):
        result = anomaly_map(np.full(4, np.nan), (2, 2), (6, 6))
    assert np.isnan(result).all()
    assert "no patch has a finite score" in caplog.text
    assert np.isnan(image_score(result))


def test_image_score_rejects_infinite_maps():
    with pytest.raises(ValueError, match="anomaly_map contains 1 infinite values"):
        image_score(np.array([[0.0, np.inf], [np.nan, 1.0]]))
    assert image_score(np.array([[0.0, np.nan], [np.nan, 1.0]])) == 1.0


# ---------------------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize(
    "labels, scores, error, message",
    [
        (
            [0, 2, 1, 0],
            [1, 2, 3, 4],
            ValueError,
            "labels must contain only 0 and 1 .* also contains 2",
        ),
        ([0, -1, 1, 0], [1, 2, 3, 4], ValueError, "also contains -1"),
        ([0, np.nan, 1, 0], [1, 2, 3, 4], ValueError, "also contains nan"),
        (["a", "b"], [1, 2], TypeError, "labels must be a bool array or numbers"),
        ([[0, 1], [1]], [1, 2], TypeError, "labels must be a binary array"),
        ([0, 1, 1], [1, 2, 3, 4], ValueError, "got 3 labels and 4 scores"),
        (
            [0, 0, 1, 1],
            [np.nan] * 4,
            ValueError,
            "scores contains 4 NaN and 0 infinite values",
        ),
        (
            [0, 0, 1, 1],
            [0.1, 0.2, np.inf, 0.3],
            ValueError,
            "scores contains 0 NaN and 1 infinite",
        ),
        ([], [], ValueError, "labels and scores are empty"),
    ],
)
def test_bad_auroc_inputs(labels, scores, error, message):
    with pytest.raises(error, match=message):
        auroc(labels, scores)


def test_auroc_reference_values():
    with pytest.warns(UndefinedMetricWarning, match="AUROC is undefined"):
        assert np.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert auroc([0, 0, 1, 1], [0.5] * 4) == 0.5
    assert auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]) == pytest.approx(
        0.888889, abs=1e-6
    )


def test_bad_pro_inputs():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = True
    maps = np.random.default_rng(0).random((2, 10, 10))
    with pytest.raises(ValueError, match="fpr_limit must be in"):
        au_pro(masks, maps, 1.5)
    with pytest.raises(TypeError, match="fpr_limit must be a real number"):
        au_pro(masks, maps, "0.3")
    bad = maps.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        au_pro(masks, bad)
    with pytest.raises(ValueError):
        pixel_auroc(masks, maps[:, :5])
    with pytest.warns(UndefinedMetricWarning, match="no defect region exists"):
        assert np.isnan(au_pro(np.zeros_like(masks), maps))
