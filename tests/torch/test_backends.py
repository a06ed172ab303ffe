"""The 3dzal backend: registration, training, extraction, scoring, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zal3d_core import MVTec3D, ZeroShotModel, available_backends, get_backend  # noqa: E402
from zal3d_core.demo import generate_demo_dataset  # noqa: E402
from zal3d_core.runner import RunConfig, run_zero_shot  # noqa: E402
from zal3d_torch.backends import ZAL3DBackend  # noqa: E402
from zal3d_torch.train import load_checkpoint, save_checkpoint  # noqa: E402

SMALL = dict(rgb_weights="random", rgb_arch="resnet50", epochs=1, classifier_epochs=3,
             n_anchors=2, variants_per_sample=1, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo3d") / "data"
    return generate_demo_dataset(root, classes=("plate", "dome"), n_train=3,
                                 n_validation=1, n_test_good=1, n_test_per_defect=1,
                                 defect_types=("dent", "bump"), size=128, seed=0)


@pytest.fixture(scope="module")
def fitted(dataset):
    records = MVTec3D(dataset).samples("plate", "train", ["good"])
    model = ZeroShotModel(get_backend("3dzal", **SMALL), preprocess={"size": 96})
    model.fit([r.load() for r in records])
    return model


def test_entry_point_registers_backend():
    assert "3dzal" in available_backends()
    backend = get_backend("3dzal", branches=("fpfh",), device="cpu")
    assert isinstance(backend, ZAL3DBackend)
    assert backend.feature_dim == 33


def test_bank_branches_choice():
    backend = ZAL3DBackend(branches=("fpfh", "point"), bank_branches=("fpfh", "point"),
                           device="cpu")
    assert backend.feature_dim == 33 + 64
    assert ZAL3DBackend(branches=("point",), device="cpu").bank_branches == ("point",)
    with pytest.raises(ValueError, match=r"bank_branches \['rgb'\] are not among the computed"):
        ZAL3DBackend(branches=("fpfh",), bank_branches=("rgb",), device="cpu")


def test_bad_backend_arguments():
    with pytest.raises(ValueError, match=r"branches must be a non-empty subset of rgb, fpfh, point"):
        ZAL3DBackend(branches=("depth",), device="cpu")
    with pytest.raises(ValueError, match="anomaly_types must be one of both, adding, removing"):
        ZAL3DBackend(anomaly_types="all", device="cpu")
    with pytest.raises(ValueError, match="bias_cnn must be 'random', 'pretrained' or 'none'"):
        ZAL3DBackend(bias_cnn="vgg", device="cpu")


def test_extract_before_fit_raises(dataset):
    backend = ZAL3DBackend(branches=("fpfh", "point"), device="cpu")
    sample = MVTec3D(dataset).samples("dome", "test")[0].load()
    with pytest.raises(RuntimeError, match="not trained"):
        backend.extract(sample)


def test_fit_trains_every_part(fitted):
    backend = fitted.backend
    info = backend.training_info
    assert info["n_pseudo_patches"] > 0
    assert info["n_normal_patches"] > info["n_pseudo_patches"]
    assert len(info["encoder_loss"]) == 1
    assert len(info["classifier_loss"]) == 3
    assert set(backend.scales) == {"rgb", "fpfh", "point"}
    assert backend.bank_branches == ("rgb", "fpfh")
    assert fitted.bank.shape[1] == backend.feature_dim == 1536 + 33
    assert fitted.distance_scale > 0


def test_branches_are_scaled_to_unit_mean_norm(fitted, dataset):
    backend = fitted.backend
    assert backend.classifier_centering == "none"
    sample = fitted.preprocess(MVTec3D(dataset).samples("plate", "train", ["good"])[0].load())
    features = backend.extract(sample)
    for rows, branches in ((features.features, backend.bank_branches),
                           (features.aux, backend.classifier_branches)):
        rows = rows[features.patch_valid]
        offset = 0
        for branch in branches:
            dim = backend.branch_dims[branch]
            norms = np.linalg.norm(rows[:, offset:offset + dim], axis=1)
            assert 0.3 < norms.mean() < 3.0, branch
            offset += dim
        assert offset == rows.shape[1]


def test_classifier_input_centred_per_scan(dataset):
    records = MVTec3D(dataset).samples("plate", "train", ["good"])
    model = ZeroShotModel(get_backend("3dzal", classifier_centering="scan", **SMALL),
                          preprocess={"size": 96})
    model.fit([r.load() for r in records])
    backend = model.backend
    raw = MVTec3D(dataset).samples("dome", "test")[0].load()
    features = backend.extract(model.preprocess(raw))
    aux = features.aux[features.patch_valid]
    expected_dim = sum(backend.branch_dims[b] for b in backend.classifier_branches)
    assert aux.shape[1] == expected_dim
    np.testing.assert_allclose(np.median(aux, axis=0), 0.0, atol=1e-6)
    prediction = model.predict(raw)
    assert np.isfinite(prediction.image_score)
    with pytest.raises(ValueError, match="classifier_centering must be 'scan' or 'none'"):
        ZAL3DBackend(classifier_centering="image", device="cpu")


def test_predict_gives_bounded_classifier_scores(fitted, dataset):
    sample = fitted.preprocess(MVTec3D(dataset).samples("dome", "test")[0].load())
    features = fitted.backend.extract(sample)
    valid = features.patch_valid
    probabilities = fitted.backend.patch_scores(features.features[valid], features.aux[valid])
    assert probabilities.shape == (int(features.patch_valid.sum()),)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    prediction = fitted.predict_features(features)
    assert np.isfinite(prediction.image_score)
    assert np.isnan(prediction.anomaly_map[~features.valid]).all()
    assert np.isfinite(prediction.anomaly_map[features.valid]).all()


def test_save_load_gives_identical_scores(fitted, dataset, tmp_path):
    path = fitted.save(tmp_path / "model.npz")
    loaded = ZeroShotModel.load(path)
    sample = fitted.preprocess(MVTec3D(dataset).samples("dome", "test")[1].load())
    a = fitted.predict(sample, preprocessed=True)
    b = loaded.predict(sample, preprocessed=True)
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert a.image_score == b.image_score
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["metadata"].tobytes())
        assert meta["backend"] == "3dzal"
        assert any(key.startswith("backend.encoder.") for key in archive.files)


def test_training_is_reproducible(dataset):
    records = MVTec3D(dataset).samples("plate", "train", ["good"])
    banks = []
    for _ in range(2):
        model = ZeroShotModel(get_backend("3dzal", **{**SMALL, "branches": ("fpfh", "point")}),
                              preprocess={"size": 96})
        model.fit([r.load() for r in records])
        banks.append(model.bank)
    np.testing.assert_array_equal(banks[0], banks[1])


@pytest.mark.parametrize("anomaly_types", ["adding", "removing"])
def test_single_anomaly_type_ablation(dataset, anomaly_types):
    records = MVTec3D(dataset).samples("plate", "train", ["good"])
    backend = get_backend("3dzal", **{**SMALL, "branches": ("fpfh", "point"),
                                      "anomaly_types": anomaly_types, "bias_cnn": "none"})
    ZeroShotModel(backend, preprocess={"size": 96}).fit([r.load() for r in records])
    assert backend.training_info["n_pseudo_patches"] > 0


def test_checkpoint_round_trip_and_errors(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "ckpt.pt", state, {"epochs": 3})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"])
    assert meta == {"epochs": 3}
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_runner_compares_methods_side_by_side(dataset, tmp_path):
    config = RunConfig(
        data_root=dataset, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
        train_class="plate", methods=("btf", "3dzal"), preprocess={"size": 96},
        backend_config={"3dzal": {**SMALL, "branches": ("fpfh", "point")}}, n_heatmaps=1,
    )
    results = run_zero_shot(config)
    methods = [row["method"] for row in results["results"]]
    assert methods == ["btf", "3dzal"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "### 3dzal: AU-PRO (FPR limit 0.3)" in table
    assert "### Mean over test classes, by method" in table


def test_missing_rgb_weights_warn_once(tmp_path, monkeypatch, caplog):
    import zal3d_torch.backends as backends

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setattr(backends, "_RGB_WARNED", set())
    with caplog.at_level("DEBUG", logger="zal3d_torch.backends"):
        first = ZAL3DBackend(branches=("rgb", "fpfh"), rgb_arch="resnet50", device="cpu")
        second = ZAL3DBackend(branches=("rgb", "fpfh"), rgb_arch="resnet50", device="cpu")
    for backend in (first, second):
        assert backend.rgb_weights == "none"
        assert backend.branches == ("fpfh",)
    left_out = [r for r in caplog.records if "rgb branch left out" in r.getMessage()]
    assert [r.levelname for r in left_out] == ["WARNING", "DEBUG"]
    assert "resnet50" in left_out[0].getMessage()
