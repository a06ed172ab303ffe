"""ZeroShotModel: fitting, prediction, and save/load without pickle."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from zal3d_core.backend import (
    FeatureBackend,
    PatchFeatures,
    available_backends,
    get_backend,
    load_backend,
    register_backend,
)
from zal3d_core.datasets import Sample
from zal3d_core.model import MODEL_FORMAT_VERSION, ZeroShotModel


class DepthBackend:
    """Patch features = mean and spread of z per 8 x 8 block; enough to test the model."""

    name = "test-depth"
    feature_dim = 2

    def __init__(self, block: int = 8):
        self.block = block

    def config(self):
        return {"block": self.block}

    def extract(self, sample):
        xyz = sample.xyz
        valid = ~np.isnan(xyz).any(axis=2)
        h, w = valid.shape
        gh, gw = h // self.block, w // self.block
        z = np.where(valid, xyz[..., 2], 0.0)[: gh * self.block, : gw * self.block]
        blocks = z.reshape(gh, self.block, gw, self.block).swapaxes(1, 2).reshape(gh * gw, -1)
        counts = valid[: gh * self.block, : gw * self.block].reshape(
            gh, self.block, gw, self.block).swapaxes(1, 2).reshape(gh * gw, -1).sum(1)
        features = np.stack([blocks.mean(1), blocks.std(1)], axis=1).astype(np.float32)
        return PatchFeatures(features=features, patch_valid=counts > 0,
                             grid_shape=(gh, gw), valid=valid)


register_backend("test-depth", DepthBackend)


def make_sample(seed: int, bump: bool = False, size: int = 32) -> Sample:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    z = 0.5 + 0.01 * rng.standard_normal((size, size)).astype(np.float32)
    gt = np.zeros((size, size), bool)
    if bump:
        gt[8:16, 8:16] = True
        z[gt] += 0.3
    xyz = np.stack([xs, ys, z], axis=-1)
    xyz[0, 0] = np.nan
    return Sample(xyz=xyz, rgb=None, gt=gt, label=int(bump), class_name="c", split="test",
                  defect="bump" if bump else "good", name=f"s{seed}", path=None)


def fitted_model(**kwargs) -> ZeroShotModel:
    model = ZeroShotModel("test-depth", preprocess={"size": 32, "remove_plane": False},
                          coreset_ratio=0.5, **kwargs)
    features = [model.backend.extract(make_sample(i)) for i in range(4)]
    return model.fit_features(features)


def test_backend_protocol_and_registry():
    assert isinstance(DepthBackend(), FeatureBackend)
    assert "fpfh" in available_backends()
    assert "test-depth" in available_backends()
    assert get_backend("test-depth", block=4).block == 4


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; registered backends: .*fpfh"):
        get_backend("nope")


class BrokenEntryPoint:
    """An entry point whose package fails to import, as 3dzal does without torch."""

    value = "missing_package.backends:register"

    def load(self):
        raise ImportError("No module named 'missing_package'")


def test_load_backend_reports_failed_import(monkeypatch):
    import zal3d_core.backend as backend_module

    monkeypatch.setattr(backend_module, "_entry_points", lambda: {"broken": BrokenEntryPoint()})
    assert load_backend("fpfh") is True
    assert load_backend("nope") is False
    with pytest.raises(ImportError, match=r"backend 'broken' needs a package that failed"):
        load_backend("broken")
    with pytest.raises(ImportError, match=r'pip install "zal3d\[torch\]"'):
        get_backend("broken")


def test_backends_command_marks_unloadable_method(monkeypatch, capsys):
    import zal3d_core.backend as backend_module
    from zal3d_core import cli
    from zal3d_core.runner import METHODS

    monkeypatch.setattr(backend_module, "_entry_points", lambda: {"broken": BrokenEntryPoint()})
    monkeypatch.setitem(METHODS, "broken", ("broken", {}))
    assert cli.main(["backends"]) == 0
    output = capsys.readouterr().out
    assert "btf      backend fpfh (available)" in output
    assert 'broken   backend broken (needs pip install "zal3d[torch]")' in output


def test_fit_builds_bank_of_requested_size():
    model = fitted_model()
    assert model.fit_info["n_patches"] == 4 * 16
    assert model.bank.shape == (32, 2)
    assert model.fit_info["n_bank"] == 32


def test_predict_marks_defect_higher():
    model = fitted_model(sigma=0.0)
    prediction = model.predict_features(model.backend.extract(make_sample(9, bump=True)))
    amap = prediction.anomaly_map
    assert amap.shape == (32, 32)
    assert np.isnan(amap[0, 0])
    assert np.nanmean(amap[8:16, 8:16]) > 5 * np.nanmean(amap[20:, 20:])
    assert prediction.image_score == pytest.approx(np.nanmax(amap))
    good = model.predict_features(model.backend.extract(make_sample(10)))
    assert good.image_score < prediction.image_score


def test_predict_before_fit_raises():
    model = ZeroShotModel("test-depth")
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_features(model.backend.extract(make_sample(0)))


def test_predict_dimension_mismatch():
    model = fitted_model()
    features = PatchFeatures(features=np.zeros((16, 5), np.float32),
                             patch_valid=np.ones(16, bool), grid_shape=(4, 4),
                             valid=np.ones((32, 32), bool))
    with pytest.raises(ValueError, match="features have 5 columns, but the memory bank has 2"):
        model.predict_features(features)


def test_fit_without_valid_patches():
    model = ZeroShotModel("test-depth")
    empty = PatchFeatures(features=np.zeros((4, 2), np.float32), patch_valid=np.zeros(4, bool),
                          grid_shape=(2, 2), valid=np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="hold no valid patches"):
        model.fit_features([empty])
    with pytest.raises(ValueError, match="at least one sample"):
        model.fit_features([])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"coreset_ratio": 0.0}, "coreset_ratio must be a finite number > 0"),
        ({"coreset_ratio": 1.5}, r"coreset_ratio must be in \(0, 1\]"),
        ({"n_reweight": 0}, "n_reweight must be >= 1"),
        ({"sigma": -1.0}, "sigma must be a finite number >= 0"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZeroShotModel("test-depth", **kwargs)


def test_save_load_round_trip(tmp_path):
    model = fitted_model()
    path = model.save(tmp_path / "model.npz")
    loaded = ZeroShotModel.load(path)
    np.testing.assert_array_equal(loaded.bank, model.bank)
    sample = make_sample(11, bump=True)
    a = model.predict_features(model.backend.extract(sample))
    b = loaded.predict_features(loaded.backend.extract(sample))
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert a.image_score == b.image_score
    assert loaded.preprocess_config == model.preprocess_config
    assert loaded.backend.config() == {"block": 8}


def test_save_adds_suffix_and_uses_no_pickle(tmp_path):
    path = fitted_model().save(tmp_path / "model")
    assert path.name == "model.npz"
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"bank", "metadata"}
        assert archive["bank"].dtype == np.float32


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    path = fitted_model().save(tmp_path / "model.npz")
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fitted_model(seed=3).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays["metadata"].tobytes())
    meta.update(changes)
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def test_load_rejects_unknown_version(tmp_path):
    path = fitted_model().save(tmp_path / "model.npz")
    _rewrite(path, format_version=MODEL_FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="model format version 2, but this zal3d .* reads version 1"):
        ZeroShotModel.load(path)


def test_load_rejects_other_format(tmp_path):
    path = fitted_model().save(tmp_path / "model.npz")
    _rewrite(path, format="something-else")
    with pytest.raises(ValueError, match="is not a zal3d model file"):
        ZeroShotModel.load(path)


def test_load_rejects_truncated_file(tmp_path):
    path = fitted_model().save(tmp_path / "model.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid zal3d model file"):
        ZeroShotModel.load(path)


def test_load_rejects_changed_bank(tmp_path):
    path = fitted_model().save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["bank"] = arrays["bank"] + 1
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="memory bank checksum does not match"):
        ZeroShotModel.load(path)


def test_load_rejects_plain_npz_and_missing_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="lacks the 'metadata' and 'bank' entries"):
        ZeroShotModel.load(path)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        ZeroShotModel.load(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="not a valid zal3d model file"):
        ZeroShotModel.load(text)


def test_load_rejects_pickled_entries(tmp_path):
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("bank.npy", "w") as stream:
            np.lib.format.write_array(stream, np.array([object()], dtype=object),
                                      allow_pickle=True)
        with archive.open("metadata.npy", "w") as stream:
            np.lib.format.write_array(stream, np.frombuffer(b"{}", np.uint8))
    with pytest.raises(ValueError, match="not a valid zal3d model file"):
        ZeroShotModel.load(path)


def test_same_seed_same_bank():
    a = fitted_model(seed=5)
    b = fitted_model(seed=5)
    np.testing.assert_array_equal(a.bank, b.bank)
