"""ResNet inductive-bias map and RGB features against step-by-step torchvision references."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
F = torch.nn.functional

from zal3d_torch.resnet import (
    ARCHITECTURES,
    RGBFeatureExtractor,
    inductive_bias_map,
    load_resnet,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@functools.lru_cache(maxsize=4)
def random_resnet(arch, seed):
    """A torchvision ResNet with random weights drawn after torch.manual_seed(seed).

    Cached, because building a ResNet-50 takes a large part of each test's time. The
    tests only read the model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[arch][0](weights=None)
    return model.eval()


def stages(model, images, last):
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    outputs = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
        outputs[name] = x
        if name == last:
            return outputs
    return outputs


@pytest.fixture(scope="module")
def xyz():
    """A 40 x 48 bumpy surface with a missing corner and a missing stripe."""
    rows, cols = np.mgrid[0:40, 0:48].astype(np.float64)
    z = 0.6 + 0.02 * np.sin(cols / 4) * np.cos(rows / 5)
    cloud = np.stack([(cols - 24) * z / 200, (rows - 20) * z / 200, z], -1)
    cloud[:8, :10] = np.nan
    cloud[25:28, :] = np.nan
    return cloud.astype(np.float32)


def reference_bias_map(xyz, seed, layer):
    valid = ~np.isnan(xyz).any(axis=2)
    values = xyz[valid].astype(np.float64)
    std = values.std(axis=0)
    std[std == 0] = 1.0
    image = np.zeros(xyz.shape, np.float32)
    image[valid] = ((values - values.mean(axis=0)) / std).astype(np.float32)
    model = random_resnet("resnet50", seed)
    with torch.no_grad():
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
        feature = stages(model, tensor, layer)[layer]
        norm = feature.pow(2).sum(dim=1, keepdim=True).sqrt()
        up = F.interpolate(norm, size=xyz.shape[:2], mode="bilinear", align_corners=False)
    expected = up[0, 0].numpy()
    expected[~valid] = np.nan
    return expected


# ---------------------------------------------------------------------------------
# Inductive-bias map


def test_bias_map_shape_and_nan_off_object(xyz):
    score_map = inductive_bias_map(xyz, device="cpu")
    assert score_map.shape == (40, 48)
    assert score_map.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(score_map), np.isnan(xyz).any(axis=2))
    assert (score_map[~np.isnan(score_map)] >= 0).all()


def test_bias_map_matches_reference(xyz):
    score_map = inductive_bias_map(xyz, seed=3, device="cpu")
    expected = reference_bias_map(xyz, 3, "layer2")
    np.testing.assert_allclose(score_map, expected, rtol=1e-5, atol=1e-6)


def test_bias_map_other_layer(xyz):
    score_map = inductive_bias_map(xyz, seed=3, layer="layer3", device="cpu")
    expected = reference_bias_map(xyz, 3, "layer3")
    np.testing.assert_allclose(score_map, expected, rtol=1e-5, atol=1e-6)


def test_bias_map_seeded(xyz):
    first = inductive_bias_map(xyz, seed=3, device="cpu")
    again = inductive_bias_map(xyz, seed=3, device="cpu")
    other = inductive_bias_map(xyz, seed=2, device="cpu")
    np.testing.assert_array_equal(first, again)
    valid = ~np.isnan(first)
    assert not np.allclose(first[valid], other[valid])


def test_bias_map_nan_does_not_leak(xyz):
    # Pixels with only z missing are missing too; their x and y must not matter.
    partial = xyz.copy()
    missing = np.isnan(xyz).any(axis=2)
    rng = np.random.default_rng(0)
    partial[missing, 0] = rng.uniform(-5, 5, missing.sum())
    partial[missing, 1] = rng.uniform(-5, 5, missing.sum())
    first = inductive_bias_map(xyz, device="cpu")
    second = inductive_bias_map(partial, device="cpu")
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first[~missing]).all()


def test_bias_map_independent_of_units(xyz):
    metres = inductive_bias_map(xyz, device="cpu")
    millimetres = inductive_bias_map(xyz.astype(np.float64) * 1000 + 250, device="cpu")
    np.testing.assert_allclose(metres, millimetres, rtol=1e-4, atol=1e-5)


def test_bias_map_keeps_global_rng(xyz):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    inductive_bias_map(xyz, seed=9, device="cpu")
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_bias_map_constant_channel():
    rows, cols = np.mgrid[0:16, 0:16].astype(np.float64)
    flat = np.stack([cols / 10, rows / 10, np.full_like(rows, 0.5)], -1)
    score_map = inductive_bias_map(flat, device="cpu")
    assert np.isfinite(score_map).all()


def test_bias_map_errors(xyz):
    with pytest.raises(ValueError, match="layer must be one of 'layer1', 'layer2'"):
        inductive_bias_map(xyz, layer="layer5", device="cpu")
    with pytest.raises(ValueError, match="at least 1 valid"):
        inductive_bias_map(np.full((8, 8, 3), np.nan), device="cpu")
    with pytest.raises(ValueError, match=r"xyz must have shape \(H, W, 3\)"):
        inductive_bias_map(xyz[..., :2], device="cpu")
    with pytest.raises(TypeError, match="weights must be 'random', 'imagenet'"):
        inductive_bias_map(xyz, weights=3, device="cpu")


# ---------------------------------------------------------------------------------
# Weights


def test_imagenet_missing_cache_message(xyz, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(RuntimeError, match="not found in the torch hub cache") as info:
        inductive_bias_map(xyz, weights="imagenet", device="cpu")
    message = str(info.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "weights='/path/to/file.pth'" in message


def test_imagenet_read_from_cache(xyz, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(random_resnet("resnet50", 5).state_dict(), checkpoints / "resnet50-11ad3fa6.pth")
    from_cache = inductive_bias_map(xyz, weights="imagenet", device="cpu")
    np.testing.assert_array_equal(from_cache, inductive_bias_map(xyz, seed=5, device="cpu"))


def test_weights_enum_of_other_arch():
    from torchvision.models import ResNet50_Weights

    with pytest.raises(ValueError, match="belong to another architecture"):
        load_resnet("wide_resnet50_2", ResNet50_Weights.IMAGENET1K_V1)


def test_weights_path_torch_save(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(random_resnet("resnet50", 7).state_dict(), path)
    loaded = load_resnet("resnet50", path)
    expected = random_resnet("resnet50", 7)
    for (name, value), reference in zip(loaded.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(value, reference), name
    assert not loaded.training


def test_weights_path_wrapped_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": random_resnet("resnet50", 8).state_dict(), "epoch": 3}, path)
    loaded = load_resnet("resnet50", str(path))
    assert torch.equal(loaded.conv1.weight, random_resnet("resnet50", 8).conv1.weight)


def test_weights_path_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "weights.safetensors"
    safetensors.save_file(random_resnet("resnet50", 9).state_dict(), str(path))
    loaded = load_resnet("resnet50", path)
    assert torch.equal(loaded.fc.weight, random_resnet("resnet50", 9).fc.weight)


def test_weights_safetensors_missing_package(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"")
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="needs the safetensors package"):
        load_resnet("resnet50", path)


def test_weights_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .* not found"):
        load_resnet("resnet50", tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="does not fit resnet50"):
        load_resnet("resnet50", wrong)
    partial = tmp_path / "partial.pth"
    state = random_resnet("resnet50", 0).state_dict()
    del state["fc.bias"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"1 missing keys \(e.g. \['fc.bias'\]\)"):
        load_resnet("resnet50", partial)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ValueError, match="contains a Tensor, not a state dict"):
        load_resnet("resnet50", not_a_dict)
    with pytest.raises(ValueError, match="arch must be one of 'resnet50', 'wide_resnet50_2'"):
        load_resnet("resnet18")


# ---------------------------------------------------------------------------------
# RGB features


@pytest.fixture(scope="module")
def small_extractor():
    return RGBFeatureExtractor("resnet50", weights="random", device="cpu", image_size=64)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)


def reference_rgb_features(rgb, seed, image_size, grid):
    model = random_resnet("resnet50", seed)
    image = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    image = F.interpolate(image, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        outputs = stages(model, (image - mean) / std, "layer3")
        pool = torch.nn.AvgPool2d(3, stride=1, padding=1)
        layer2 = pool(outputs["layer2"])
        layer3 = F.interpolate(pool(outputs["layer3"]), size=(grid, grid), mode="bilinear",
                               align_corners=False)
    maps = torch.cat([layer2, layer3], dim=1)[0]
    return maps.reshape(maps.shape[0], -1).T.numpy()


def test_rgb_features_match_reference(small_extractor, rgb):
    features = small_extractor(rgb)
    assert features.shape == (64, 1536)
    assert features.dtype == np.float32
    expected = reference_rgb_features(rgb, 0, 64, 8)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_rgb_features_uint8_equals_float(small_extractor, rgb):
    np.testing.assert_allclose(
        small_extractor(rgb), small_extractor(rgb / 255.0), rtol=1e-5, atol=1e-6
    )


def test_rgb_features_batch_equals_single(small_extractor, rgb):
    second = rgb[::-1].copy()
    batch = small_extractor(np.stack([rgb, second]))
    assert batch.shape == (2, 64, 1536)
    np.testing.assert_allclose(batch[0], small_extractor(rgb), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch[1], small_extractor(second), rtol=1e-4, atol=1e-5)


def test_rgb_features_grid_downsampled(rgb):
    extractor = RGBFeatureExtractor(
        "resnet50", layers=("layer1",), weights="random", device="cpu", image_size=64,
        grid_size=4,
    )
    features = extractor(rgb)
    assert features.shape == (16, 256)
    model = random_resnet("resnet50", 0)
    image = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    image = F.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        layer1 = stages(model, (image - mean) / std, "layer1")["layer1"]
        pooled = F.adaptive_avg_pool2d(F.avg_pool2d(layer1, 3, 1, 1), 4)[0]
    np.testing.assert_allclose(features, pooled.reshape(256, -1).T.numpy(), rtol=1e-4,
                               atol=1e-5)


def test_rgb_features_default_wide_resnet_grid(rgb):
    extractor = RGBFeatureExtractor(weights="random", device="cpu")
    features = extractor(rgb)
    assert extractor.arch == "wide_resnet50_2"
    assert features.shape == (28 * 28, 1536)
    assert extractor.feature_dim == 1536
    assert np.isfinite(features).all()


def test_rgb_features_seeded(small_extractor, rgb):
    # Seed 0 reproduces the reference network (see the reference test), and another
    # seed gives other weights.
    other = RGBFeatureExtractor("resnet50", weights="random", device="cpu", image_size=64,
                                seed=1)
    assert not np.allclose(small_extractor(rgb), other(rgb))


def test_rgb_features_errors(small_extractor, rgb):
    with pytest.raises(ValueError, match=r"rgb must have shape \(H, W, 3\) or \(B, H, W, 3\)"):
        small_extractor(rgb[..., :2])
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        small_extractor(rgb.astype(np.float32))
    with pytest.raises(TypeError, match="rgb must be uint8 or float"):
        small_extractor(rgb.astype(np.int32))
    with pytest.raises(ValueError, match="layers must be one of 'layer1'"):
        RGBFeatureExtractor("resnet50", layers=("layer9",), weights="random", device="cpu")
    with pytest.raises(ValueError, match="layers must name at least one stage, each once"):
        RGBFeatureExtractor("resnet50", layers=("layer2", "layer2"), weights="random",
                            device="cpu")
    with pytest.raises(ValueError, match="arch must be one of"):
        RGBFeatureExtractor("vgg16", weights="random", device="cpu")
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        RGBFeatureExtractor("resnet50", weights="random", device="cpu", image_size=16)


def test_rgb_imagenet_missing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="wide_resnet50_2-95faca4d.pth"):
        RGBFeatureExtractor(device="cpu")


# ---------------------------------------------------------------------------------
# GPU


@pytest.mark.cuda
@cuda
def test_bias_map_on_cuda_matches_cpu(xyz):
    on_gpu = inductive_bias_map(xyz, device="cuda")
    on_cpu = inductive_bias_map(xyz, device="cpu")
    np.testing.assert_array_equal(np.isnan(on_gpu), np.isnan(on_cpu))
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@cuda
def test_rgb_features_on_cuda(rgb):
    extractor = RGBFeatureExtractor("resnet50", weights="random", device="cuda", image_size=64)
    assert next(extractor.model.parameters()).device.type == "cuda"
    reference = RGBFeatureExtractor("resnet50", weights="random", device="cpu", image_size=64)
    np.testing.assert_allclose(extractor(rgb), reference(rgb), rtol=1e-3, atol=1e-3)


def test_corrupt_weights_file_is_a_value_error(tmp_path):
    path = tmp_path / "bogus.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="bogus.pth is not a readable torch checkpoint"):
        load_resnet("resnet50", str(path))
