"""ResNet branches: the inductive-bias map of 3DzAL and the RGB patch features of BTF.

:func:`inductive_bias_map` feeds the xyz map of a scan to an untrained, randomly
initialised ResNet-50 and turns one layer's activations into a per-pixel map. 3DzAL
(Wang, Peng and Fu, WACV 2025) picks its pseudo-anomaly anchors where that map is
highest (see :func:`zal3d_core.synthesis.select_anchors`).
:class:`RGBFeatureExtractor` is the RGB branch of BTF (Horwitz and Hoshen, "Back to
the Feature", 2022): ImageNet ResNet features of layers 2 and 3, pooled onto the
28 x 28 patch grid that the FPFH features use.

Weights never come from the network. ``"imagenet"`` reads the checkpoint file that
torchvision would download from the torch hub cache, and a missing file raises
RuntimeError with the place to put it. A file path loads a saved state dict.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import ResNet50_Weights, WeightsEnum, Wide_ResNet50_2_Weights

from zal3d_core._validation import check_int, check_organized

from ._device import check_seed, resolve_device, seeded

__all__ = [
    "ARCHITECTURES",
    "LAYERS",
    "RGBFeatureExtractor",
    "inductive_bias_map",
    "load_resnet",
]

logger = logging.getLogger(__name__)

# Constructor and the weights that weights="imagenet" loads. For wide_resnet50_2 this
# is IMAGENET1K_V1, the checkpoint that torchvision's legacy pretrained=True gave and
# that PatchCore-style pipelines such as BTF were built on. For resnet50 it is the
# newer IMAGENET1K_V2.
ARCHITECTURES = {
    "resnet50": (torchvision.models.resnet50, ResNet50_Weights.IMAGENET1K_V2),
    "wide_resnet50_2": (
        torchvision.models.wide_resnet50_2,
        Wide_ResNet50_2_Weights.IMAGENET1K_V1,
    ),
}

# Output channels of each stage, the same for resnet50 and wide_resnet50_2 (the wide
# variant widens only the bottleneck's inner convolution).
LAYERS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHT_KEYWORDS = ("random", "imagenet")


# ---------------------------------------------------------------------------------
# Weights


def _check_arch(arch: Any) -> str:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(
            f"arch must be one of {', '.join(map(repr, ARCHITECTURES))}, but got "
            f"{arch!r}."
        )
    return arch


def _check_layer(layer: Any, name: str = "layer") -> str:
    if not isinstance(layer, str) or layer not in LAYERS:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, LAYERS))}, but got {layer!r}."
        )
    return layer


def _hub_checkpoint(weights: WeightsEnum) -> Path:
    """Return the path where torchvision stores the checkpoint of ``weights``."""
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _resolve_weights(arch: str, weights: Any) -> Path | None:
    """Turn a ``weights`` argument into a checkpoint path, or None for random weights."""
    if isinstance(weights, str) and weights == "random":
        return None
    if isinstance(weights, WeightsEnum) or (
        isinstance(weights, str) and weights == "imagenet"
    ):
        enum = ARCHITECTURES[arch][1] if isinstance(weights, str) else weights
        if not isinstance(enum, type(ARCHITECTURES[arch][1])):
            raise ValueError(
                f"weights {enum} belong to another architecture than arch={arch!r}. "
                f"Pass a member of {type(ARCHITECTURES[arch][1]).__name__}."
            )
        path = _hub_checkpoint(enum)
        if not path.is_file():
            raise RuntimeError(
                f"the {enum} weights of {arch} were not found in the torch hub cache at "
                f"{path}, and zal3d never downloads weights. Download {enum.url} on a "
                f"machine with internet access and copy it to {path} (the cache folder "
                "follows $TORCH_HOME), or pass weights='/path/to/file.pth'."
            )
        return path
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {str(path)!r} not found. Pass 'random', 'imagenet', a "
                "torchvision weights enum, or the path of a saved state dict (.pth, "
                ".pt or .safetensors)."
            )
        return path
    raise TypeError(
        f"weights must be 'random', 'imagenet', a torchvision weights enum or a file "
        f"path, but got {type(weights).__name__} {weights!r}."
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                f"reading {path} needs the safetensors package. Install it with "
                "'pip install safetensors', or save the weights with torch.save."
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(
                f"weights file {path} is not a readable safetensors file: {error}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file surfaces as KeyError, EOFError, ...
        raise ValueError(
            f"weights file {path} is not a readable torch checkpoint (truncated, "
            f"corrupted or of another format): {type(error).__name__}: {error}"
        ) from None
    # Training checkpoints often wrap the weights as {"state_dict": ...}.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        # The argument is a valid path and the file's content is wrong, so ValueError.
        raise ValueError(  # noqa: TRY004
            f"weights file {path} contains a {type(state).__name__}, not a state dict. "
            "Save model.state_dict() with torch.save."
        )
    return state


def _build(arch: str, path: str | None, seed: int) -> torch.nn.Module:
    constructor = ARCHITECTURES[arch][0]
    # Seeding inside fork_rng makes random weights reproducible without changing the
    # caller's global torch random state.
    with seeded(seed):
        model = constructor(weights=None)
    if path is not None:
        state = _read_state_dict(Path(path))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise ValueError(
                f"weights file {path} does not fit {arch}: {str(error).splitlines()[-1]}"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"weights file {path} does not fit {arch}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}) and {len(unexpected)} unexpected keys (e.g. "
                f"{unexpected[:3]}). Save the state_dict() of "
                f"torchvision.models.{arch}()."
            )
        logger.debug("loaded %s weights from %s", arch, path)
    return model.eval()


def load_resnet(
    arch: str = "resnet50", weights: Any = "random", *, seed: int = 0
) -> torch.nn.Module:
    """Build a torchvision ResNet in eval mode with random, ImageNet or saved weights.

    Parameters
    ----------
    arch : {"resnet50", "wide_resnet50_2"}, default "resnet50"
    weights : "random", "imagenet", torchvision WeightsEnum, str or os.PathLike
        ``"random"`` initialises the network as torchvision does, after
        ``torch.manual_seed(seed)`` (the caller's random state is restored). ``"imagenet"``
        reads the checkpoint of :data:`ARCHITECTURES` from the torch hub cache, and a
        WeightsEnum member reads that checkpoint. A path reads a state dict saved
        with ``torch.save`` (loaded with ``weights_only=True``), or a ``.safetensors``
        file when the safetensors package is installed.
    seed : int, default 0
        Seed of the random initialisation.

    Returns
    -------
    torch.nn.Module
        On the CPU, in eval mode.

    Raises
    ------
    RuntimeError
        If the ImageNet checkpoint is not in the torch hub cache.
    FileNotFoundError
        If a weights path does not exist.
    ValueError
        If ``arch`` is unknown or the state dict does not fit the architecture.
    """
    arch = _check_arch(arch)
    seed = check_seed(seed)
    path = _resolve_weights(arch, weights)
    return _build(arch, None if path is None else str(path), 0 if seed is None else seed)


@functools.lru_cache(maxsize=2)
def _cached_model(
    arch: str, path: str | None, stamp: tuple[int, int] | None, seed: int, device: str
) -> torch.nn.Module:
    # ``stamp`` (mtime, size) is part of the key, so a rewritten weights file is read
    # again. The cached model is private: callers never see it.
    del stamp
    return _build(arch, path, seed).to(device)


def _model_for(arch: str, weights: Any, seed: int, device: torch.device) -> torch.nn.Module:
    path = _resolve_weights(arch, weights)
    stamp = None
    if path is not None:
        info = path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
    key_path = None if path is None else str(path.resolve())
    return _cached_model(arch, key_path, stamp, seed, str(device))


def _forward_until(model: torch.nn.Module, images: torch.Tensor, last: str) -> dict:
    """Run the ResNet stem and stages up to ``last``; return each stage's output."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    outputs = {}
    for name in LAYERS:
        x = getattr(model, name)(x)
        outputs[name] = x
        if name == last:
            break
    return outputs


# ---------------------------------------------------------------------------------
# Inductive-bias map


def _standardise(xyz: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Standardise each coordinate over the valid pixels; invalid pixels become 0.

    A coordinate that is constant over the valid pixels is only centred.
    """
    values = np.asarray(xyz[valid], np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std[std == 0] = 1.0
    image = np.zeros(xyz.shape, np.float32)
    image[valid] = ((values - mean) / std).astype(np.float32)
    return image


def inductive_bias_map(
    xyz: Any,
    *,
    weights: Any = "random",
    seed: int = 0,
    layer: str = "layer2",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Compute the activation map of a ResNet-50 fed the xyz map of a scan.

    The input has x, y and z as its three channels. Each channel is standardised over
    the valid pixels, so that the map does not depend on the units or the position of
    the scan, and invalid pixels are set to 0, the mean, so NaN never reaches the
    network. The network runs in eval mode under ``torch.no_grad``. The map is the
    channel-wise L2 norm of the ``layer`` output, upsampled bilinearly
    (``align_corners=False``) to H x W and set to NaN off the object. The L2 norm is
    the size of the whole activation vector at a place, so it needs no choice of
    channel. ``layer2`` (stride 8) is the default because it keeps local detail
    while each activation still covers a receptive field of tens of pixels.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud, NaN where no point was measured. A pixel with any NaN
        coordinate counts as missing.
    weights : "random", "imagenet", WeightsEnum or path, default "random"
        See :func:`load_resnet`. 3DzAL uses the untrained network ("random").
    seed : int, default 0
        Seed of the random initialisation.
    layer : {"layer1", "layer2", "layer3", "layer4"}, default "layer2"
    device : str or torch.device, optional
        ``None`` uses CUDA when available.

    Returns
    -------
    score_map : ndarray of shape (H, W), float32
        NaN exactly at the missing pixels.

    Raises
    ------
    ValueError
        If ``xyz`` is not (H, W, 3) or has no valid pixel, or ``layer`` is unknown.
    RuntimeError
        If ImageNet weights are requested and not in the torch hub cache.

    Notes
    -----
    The network for each (weights, seed, device) is built once and cached (two at a
    time), so a training loop over many scans does not rebuild it.
    """
    array = check_organized(xyz, "xyz", min_valid=1)
    layer = _check_layer(layer)
    seed = check_seed(seed)
    seed = 0 if seed is None else seed
    device = resolve_device(device)
    valid = ~np.isnan(array).any(axis=2)

    image = _standardise(array, valid)
    model = _model_for("resnet50", weights, seed, device)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    with torch.no_grad():
        features = _forward_until(model, tensor, layer)[layer]
        norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)
        upsampled = F.interpolate(
            norms, size=array.shape[:2], mode="bilinear", align_corners=False
        )
    score_map = upsampled[0, 0].float().cpu().numpy()
    score_map[~valid] = np.nan
    return score_map


# ---------------------------------------------------------------------------------
# RGB features


class RGBFeatureExtractor:
    """Patch features of RGB images from ImageNet ResNet stages, the RGB branch of BTF.

    Each image is resized to ``image_size`` x ``image_size`` (bilinear, antialiased)
    and normalised with the ImageNet mean and standard deviation. The output of each
    stage in ``layers`` is averaged over 3 x 3 neighbourhoods (stride 1, padding 1,
    zero padding counted). It is then brought to ``grid_size`` x ``grid_size``, by
    adaptive average pooling when larger and by bilinear upsampling
    (``align_corners=False``) when smaller. The maps are concatenated along the channels in the
    order of ``layers``. Rows of the result run over the grid in row-major order, the
    order of the FPFH patch grid.

    Parameters
    ----------
    arch : {"wide_resnet50_2", "resnet50"}, default "wide_resnet50_2"
    layers : sequence of str, default ("layer2", "layer3")
        Stages to use, each one of "layer1" to "layer4", without repeats.
    weights : "imagenet", "random", WeightsEnum or path, default "imagenet"
        See :func:`load_resnet`.
    device : str or torch.device, optional
        ``None`` uses CUDA when available.
    seed : int, default 0
        Seed of random weights.
    image_size : int, default 224
        Side of the network input in pixels, >= 32.
    grid_size : int, optional
        Side of the patch grid. The default ``image_size // 8`` is the size of the
        layer2 map (28 for 224).

    Attributes
    ----------
    feature_dim : int
        Channels of the output (1536 for layer2 and layer3).
    model : torch.nn.Module
        The network, in eval mode on ``device``.

    Examples
    --------
    >>> import numpy as np
    >>> extractor = RGBFeatureExtractor("resnet50", weights="random", device="cpu",
    ...                                 image_size=64)
    >>> extractor(np.zeros((50, 60, 3), np.uint8)).shape
    (64, 1536)
    """

    def __init__(
        self,
        arch: str = "wide_resnet50_2",
        layers: tuple[str, ...] = ("layer2", "layer3"),
        weights: Any = "imagenet",
        device: str | torch.device | None = None,
        *,
        seed: int = 0,
        image_size: int = 224,
        grid_size: int | None = None,
    ):
        self.arch = _check_arch(arch)
        if isinstance(layers, str):
            layers = (layers,)
        self.layers = tuple(_check_layer(layer, "layers") for layer in layers)
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"layers must name at least one stage, each once, but got {layers!r}."
            )
        self.image_size = check_int(image_size, "image_size", minimum=32)
        if grid_size is None:
            grid_size = self.image_size // 8
        self.grid_size = check_int(grid_size, "grid_size", minimum=1)
        self.device = resolve_device(device)
        self.model = load_resnet(self.arch, weights, seed=seed).to(self.device)
        self.feature_dim = sum(LAYERS[layer] for layer in self.layers)
        self._last = max(self.layers, key=list(LAYERS).index)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _to_tensor(self, rgb: Any) -> tuple[torch.Tensor, bool]:
        array = np.asarray(rgb)
        single = array.ndim == 3
        if single:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(
                f"rgb must have shape (H, W, 3) or (B, H, W, 3), but got {np.shape(rgb)}."
            )
        if array.dtype == np.uint8:
            values = array.astype(np.float32) / 255.0
        elif np.issubdtype(array.dtype, np.floating):
            values = array.astype(np.float32)
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise ValueError(
                    "rgb of float dtype must hold finite values in [0, 1], but got "
                    f"values in [{np.nanmin(values)}, {np.nanmax(values)}]. Divide "
                    "8-bit values by 255, or pass them as uint8."
                )
        else:
            raise TypeError(
                f"rgb must be uint8 or float in [0, 1], but got dtype {array.dtype}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(values)).permute(0, 3, 1, 2)
        return tensor.to(self.device), single

    def _pool_to_grid(self, feature: torch.Tensor) -> torch.Tensor:
        feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
        size = feature.shape[-1]
        if size > self.grid_size:
            return F.adaptive_avg_pool2d(feature, self.grid_size)
        if size < self.grid_size:
            return F.interpolate(
                feature, size=(self.grid_size, self.grid_size), mode="bilinear",
                align_corners=False,
            )
        return feature

    def extract(self, rgb: Any) -> np.ndarray:
        """Compute the patch features of one image or a batch.

        Parameters
        ----------
        rgb : array-like of shape (H, W, 3) or (B, H, W, 3)
            uint8 in [0, 255], or float in [0, 1].

        Returns
        -------
        features : ndarray of shape (grid_size**2, feature_dim) or (B, grid_size**2, feature_dim), float32
        """
        images, single = self._to_tensor(rgb)
        with torch.no_grad():
            if images.shape[-2:] != (self.image_size, self.image_size):
                images = F.interpolate(
                    images, size=(self.image_size, self.image_size), mode="bilinear",
                    align_corners=False, antialias=True,
                )
            images = (images - self._mean) / self._std
            outputs = _forward_until(self.model, images, self._last)
            maps = [self._pool_to_grid(outputs[layer]) for layer in self.layers]
            stacked = torch.cat(maps, dim=1)
        batch = stacked.shape[0]
        features = stacked.permute(0, 2, 3, 1).reshape(batch, -1, self.feature_dim)
        features = features.float().cpu().numpy()
        return features[0] if single else features

    __call__ = extract

    def __repr__(self) -> str:
        return (
            f"RGBFeatureExtractor(arch={self.arch!r}, layers={self.layers!r}, "
            f"grid_size={self.grid_size}, feature_dim={self.feature_dim}, "
            f"device={str(self.device)!r})"
        )
