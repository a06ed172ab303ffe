"""The 3DzAL feature backend, registered with the core's backend registry.

The backend computes up to three per-patch branches on the FPFH patch grid: ``rgb``
(ImageNet ResNet features, BTF's RGB branch), ``fpfh`` (the core's pooled FPFH) and
``point`` (the PointNet++ encoder trained on pseudo anomalies). Each branch is divided
by its mean L2 norm over the normal training patches, so every branch weighs about the
same whatever its dimension and units. The memory bank holds the ``bank_branches``
(rgb and fpfh by default); the normalcy classifier reads the 3D branches (``fpfh`` and
``point``), passed as ``PatchFeatures.aux``, because pseudo anomalies change geometry
and leave the rgb image as it was.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zal3d_core.backend import FPFHBackend, PatchFeatures, register_backend
from zal3d_core.patches import organized_patch_points

from ._device import resolve_device
from .classifier import NormalcyClassifier, adversarial_scores, fit_classifier
from .losses import fpfh_projection
from .pointnet2 import PointNet2Encoder
from .train import ANOMALY_TYPES, build_training_data, train_encoder

logger = logging.getLogger(__name__)

_RGB_WARNED: set[str] = set()

__all__ = ["ZAL3DBackend", "register"]

BRANCHES = ("rgb", "fpfh", "point")


class _FeatureCache:
    """Least-recently-used cache of the untrained branches (FPFH, RGB), by scan content."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.size = 0

    @staticmethod
    def key(sample: Any, branch: str) -> str:
        digest = hashlib.sha1(branch.encode())
        digest.update(np.ascontiguousarray(sample.xyz).tobytes())
        if branch == "rgb" and sample.rgb is not None:
            digest.update(np.ascontiguousarray(sample.rgb).tobytes())
        return digest.hexdigest()

    def get(self, key: str):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: str, value: Any, nbytes: int) -> None:
        self.items[key] = value
        self.size += nbytes
        while self.size > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.size -= _nbytes(old)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, PatchFeatures):
        return value.features.nbytes + value.valid.nbytes
    return 0


class ZAL3DBackend:
    """3DzAL patch features: RGB + FPFH + a PointNet++ encoder trained on pseudo anomalies.

    Parameters
    ----------
    branches : sequence of {"rgb", "fpfh", "point"}, default all three
        Feature branches to compute.
    bank_branches : sequence of str, optional
        Branches concatenated into the memory bank, among ``branches``. The default
        is every computed branch except ``point`` (or ``point`` alone when it is the
        only one). The point
        branch is left out by default: on the demo data, adding it to the bank lowered
        the zero-shot AU-PRO of the distance score (its embedding is trained to
        separate the training class's normal patches from pseudo anomalies and does
        not place unseen classes' normal surfaces near the bank), while the classifier
        on it raised it; docs/method.md gives the numbers. Pass all three for the bank
        of the original description.
    rgb_weights : "auto", "imagenet", "random" or a file path, default "auto"
        Weights of the RGB ResNet. "auto" uses ImageNet weights from the torch hub
        cache and, when they are not there, leaves the rgb branch out with a warning
        (zal3d never downloads weights). "random" is for tests only.
    rgb_arch : {"wide_resnet50_2", "resnet50"}, default "wide_resnet50_2"
    anomaly_types : {"both", "adding", "removing"}, default "both"
    bias_cnn : {"random", "pretrained", "none"}, default "random"
        Anchor source for pseudo anomalies (see :func:`build_training_data`).
    epochs : int, default 10
        Encoder training epochs (one pass over the pseudo-anomaly patches each).
    classifier_epochs : int, default 30
    point_dim : int, default 64
        Size of the point embedding.
    patch_points : int, default 64
        Points per patch fed to the encoder.
    n_anchors, variants_per_sample, synthesis_k, min_overlap
        Pseudo-anomaly synthesis (see :func:`build_training_data`).
    temperature : float, default 0.1
    w_con, w_rd : float, default 1.0 and 0.5
        Weights of the contrastive and the disentanglement loss.
    lr : float, default 1e-3
    eta : float, default 0.01
        Step of the adversarial move before the classifier score.
    classifier_centering : {"none", "scan"}, default "none"
        "scan" subtracts, per classifier branch, the median patch feature of the
        patch's own scan before the classifier sees it, so that the classifier judges
        how a patch differs from the rest of its object rather than how the object
        differs from the training class. "none" feeds the features as they are.
        Both gave the same mean AU-PRO on the demo data (docs/results.md).
    seed : int, default 0
    device : str, optional
        torch device; CUDA when available.
    fpfh : dict, optional
        Keyword arguments of :class:`zal3d_core.backend.FPFHBackend`.
    """

    name = "3dzal"

    def __init__(
        self,
        branches: Sequence[str] = BRANCHES,
        bank_branches: Sequence[str] | None = None,
        rgb_weights: str = "auto",
        rgb_arch: str = "wide_resnet50_2",
        anomaly_types: str = "both",
        bias_cnn: str = "random",
        epochs: int = 10,
        classifier_epochs: int = 30,
        point_dim: int = 64,
        patch_points: int = 64,
        n_anchors: int = 4,
        variants_per_sample: int = 2,
        synthesis_k: int = 128,
        min_overlap: float = 0.2,
        temperature: float = 0.1,
        w_con: float = 1.0,
        w_rd: float = 0.5,
        lr: float = 1e-3,
        eta: float = 0.01,
        classifier_centering: str = "none",
        seed: int = 0,
        device: str | None = None,
        fpfh: dict[str, Any] | None = None,
    ):
        if isinstance(branches, str):
            branches = [b.strip() for b in branches.split(",") if b.strip()]
        unknown = [b for b in branches if b not in BRANCHES]
        if unknown or not branches:
            raise ValueError(
                f"branches must be a non-empty subset of {', '.join(BRANCHES)}, but got "
                f"{list(branches)!r}."
            )
        self.branches = tuple(b for b in BRANCHES if b in branches)
        if bank_branches is None:
            bank_branches = [b for b in self.branches if b != "point"] or ["point"]
        if isinstance(bank_branches, str):
            bank_branches = [b.strip() for b in bank_branches.split(",") if b.strip()]
        outside = [b for b in bank_branches if b not in self.branches]
        if outside:
            raise ValueError(
                f"bank_branches {outside} are not among the computed branches "
                f"{list(self.branches)}; add them to branches or drop them."
            )
        self._requested_bank = tuple(b for b in BRANCHES if b in bank_branches)
        if anomaly_types not in ANOMALY_TYPES:
            raise ValueError(
                f"anomaly_types must be one of {', '.join(ANOMALY_TYPES)}, but got "
                f"{anomaly_types!r}."
            )
        if bias_cnn not in ("random", "pretrained", "none"):
            raise ValueError(
                f"bias_cnn must be 'random', 'pretrained' or 'none', but got {bias_cnn!r}."
            )
        self.rgb_weights = str(rgb_weights)
        self.rgb_arch = rgb_arch
        self.anomaly_types = anomaly_types
        self.bias_cnn = bias_cnn
        self.epochs = int(epochs)
        self.classifier_epochs = int(classifier_epochs)
        self.point_dim = int(point_dim)
        self.patch_points = int(patch_points)
        self.n_anchors = int(n_anchors)
        self.variants_per_sample = int(variants_per_sample)
        self.synthesis_k = int(synthesis_k)
        self.min_overlap = float(min_overlap)
        self.temperature = float(temperature)
        self.w_con = float(w_con)
        self.w_rd = float(w_rd)
        self.lr = float(lr)
        self.eta = float(eta)
        if classifier_centering not in ("scan", "none"):
            raise ValueError(
                f"classifier_centering must be 'scan' or 'none', but got "
                f"{classifier_centering!r}."
            )
        self.classifier_centering = classifier_centering
        self.seed = int(seed)
        self.device_name = device
        self.device = resolve_device(device)
        self.fpfh_config = dict(fpfh or {})
        self.fpfh_backend = FPFHBackend(**self.fpfh_config)

        self._rgb = None
        if "rgb" in self.branches:
            self._rgb = self._make_rgb_extractor()
            if self._rgb is None:
                self.branches = tuple(b for b in self.branches if b != "rgb")
        self.bank_branches = tuple(b for b in self._requested_bank if b in self.branches)
        if not self.bank_branches:
            raise ValueError(
                f"no memory-bank branch is left: bank_branches={list(self._requested_bank)} "
                f"but only {list(self.branches)} are computed (the rgb branch is left out "
                "without ImageNet weights). Add fpfh or point to bank_branches."
            )
        self.encoder = None
        self.classifier = None
        self.projection = None
        self.scales: dict[str, float] = {}
        self.training_info: dict[str, Any] = {}
        self._cache = _FeatureCache()
        if "point" in self.branches:
            self.encoder = self._make_encoder()
            self.projection = fpfh_projection(33, self.point_dim, seed=self.seed,
                                              device=self.device)

    # Construction -----------------------------------------------------------------

    def _make_rgb_extractor(self):
        from .resnet import RGBFeatureExtractor

        weights = self.rgb_weights
        if weights == "auto":
            try:
                extractor = RGBFeatureExtractor(self.rgb_arch, weights="imagenet",
                                                device=self.device, seed=self.seed)
            except RuntimeError as error:
                # Warn once per architecture and process, because a train x test
                # matrix builds one backend per class and would repeat the warning.
                log = logger.debug if self.rgb_arch in _RGB_WARNED else logger.warning
                _RGB_WARNED.add(self.rgb_arch)
                log(
                    "rgb branch left out: no ImageNet weights for %s were found (%s). "
                    "Pass rgb_weights=PATH (--rgb-weights) to use the branch.",
                    self.rgb_arch, error,
                )
                self.rgb_weights = "none"
                return None
            self.rgb_weights = "imagenet"
            return extractor
        if weights == "none":
            return None
        return RGBFeatureExtractor(self.rgb_arch, weights=weights, device=self.device,
                                   seed=self.seed)

    def _make_encoder(self) -> PointNet2Encoder:
        return PointNet2Encoder(out_dim=self.point_dim, n_points=self.patch_points,
                                seed=self.seed).to(self.device)

    @property
    def classifier_branches(self) -> tuple[str, ...]:
        """Branches the normalcy classifier reads: the 3D ones."""
        return tuple(b for b in self.branches if b in ("fpfh", "point"))

    @property
    def branch_dims(self) -> dict[str, int]:
        """Columns of each computed branch."""
        dims = {"rgb": self._rgb.feature_dim if self._rgb is not None else 0,
                "fpfh": 33, "point": self.point_dim}
        return {b: dims[b] for b in self.branches}

    @property
    def feature_dim(self) -> int:
        """Columns of the memory-bank features (the bank branches, concatenated)."""
        return int(sum(self.branch_dims[b] for b in self.bank_branches))

    def config(self) -> dict[str, Any]:
        return {
            "branches": list(self.branches),
            "bank_branches": list(self.bank_branches),
            "rgb_weights": self.rgb_weights,
            "rgb_arch": self.rgb_arch,
            "anomaly_types": self.anomaly_types,
            "bias_cnn": self.bias_cnn,
            "epochs": self.epochs,
            "classifier_epochs": self.classifier_epochs,
            "point_dim": self.point_dim,
            "patch_points": self.patch_points,
            "n_anchors": self.n_anchors,
            "variants_per_sample": self.variants_per_sample,
            "synthesis_k": self.synthesis_k,
            "min_overlap": self.min_overlap,
            "temperature": self.temperature,
            "w_con": self.w_con,
            "w_rd": self.w_rd,
            "lr": self.lr,
            "eta": self.eta,
            "classifier_centering": self.classifier_centering,
            "seed": self.seed,
            "device": self.device_name,
            "fpfh": self.fpfh_config,
        }

    # Branch features ----------------------------------------------------------------

    def _fpfh_features(self, sample: Any) -> PatchFeatures:
        key = _FeatureCache.key(sample, "fpfh")
        cached = self._cache.get(key)
        if cached is None:
            cached = self.fpfh_backend.extract(sample)
            self._cache.put(key, cached, _nbytes(cached))
        return cached

    def _rgb_features(self, sample: Any, image_shape) -> np.ndarray:
        if sample.rgb is None:
            raise ValueError(
                f"the rgb branch needs the rgb modality, but sample {sample.name!r} has "
                "none; load rgb or pass branches without 'rgb'."
            )
        key = _FeatureCache.key(sample, "rgb")
        cached = self._cache.get(key)
        if cached is None:
            cached = np.asarray(self._rgb.extract(sample.rgb), np.float32)
            self._cache.put(key, cached, cached.nbytes)
        return cached

    def _point_features(self, xyz: np.ndarray) -> np.ndarray:
        points, counts = organized_patch_points(
            xyz, self.fpfh_backend.grid, self.fpfh_backend.pool_kernel, self.patch_points
        )
        return self._embed(points) * (counts > 0)[:, None]

    def _embed(self, points: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        out = np.zeros((len(points), self.point_dim), np.float32)
        self.encoder.eval()
        with torch.no_grad():
            for start in range(0, len(points), batch_size):
                batch = torch.as_tensor(points[start:start + batch_size], device=self.device)
                out[start:start + batch_size] = self.encoder(batch).cpu().numpy()
        return out

    def _branch_arrays(self, sample: Any) -> tuple[dict[str, np.ndarray], PatchFeatures]:
        base = self._fpfh_features(sample)
        arrays: dict[str, np.ndarray] = {}
        if "rgb" in self.branches:
            arrays["rgb"] = self._rgb_features(sample, base.image_shape)
        if "fpfh" in self.branches:
            arrays["fpfh"] = base.features
        if "point" in self.branches:
            arrays["point"] = self._point_features(sample.xyz)
        return arrays, base

    # Training -------------------------------------------------------------------------

    def fit(self, samples: Sequence[Any], *, progress: bool = False) -> None:
        """Train the encoder and the classifier on normal scans of the training class(es)."""
        started = time.perf_counter()
        data = build_training_data(
            samples, self.fpfh_backend, anomaly_types=self.anomaly_types,
            bias_cnn=self.bias_cnn, n_anchors=self.n_anchors,
            variants_per_sample=self.variants_per_sample, k=self.synthesis_k,
            n_points=self.patch_points, min_overlap=self.min_overlap, seed=self.seed,
            device=self.device, progress=progress,
        )
        history: list[float] = []
        if self.encoder is not None:
            self.encoder = self._make_encoder()
            history = train_encoder(
                self.encoder, data, self.projection, epochs=self.epochs, lr=self.lr,
                temperature=self.temperature, w_con=self.w_con, w_rd=self.w_rd,
                seed=self.seed, progress=progress,
            )

        # Branch scales from the normal training patches.
        normal = {"fpfh": data.normal_fpfh}
        pseudo = {"fpfh": data.pseudo_fpfh}
        if self.encoder is not None:
            normal["point"] = self._embed(data.normal_points)
            pseudo["point"] = self._embed(data.pseudo_points)
        self.scales = {}
        for branch in ("fpfh", "point"):
            if branch in normal:
                norms = np.linalg.norm(normal[branch], axis=1)
                self.scales[branch] = float(norms.mean()) if norms.mean() > 0 else 1.0
        if "rgb" in self.branches:
            rgb_norms = []
            for sample in samples:
                base = self._fpfh_features(sample)
                rgb = self._rgb_features(sample, base.image_shape)
                rgb_norms.append(np.linalg.norm(rgb[base.patch_valid], axis=1))
            mean = float(np.concatenate(rgb_norms).mean())
            self.scales["rgb"] = mean if mean > 0 else 1.0

        classifier_loss: list[float] = []
        if self.classifier_branches:
            x_normal = np.concatenate(
                [normal[b] / self.scales[b] for b in self.classifier_branches], axis=1)
            x_pseudo = np.concatenate(
                [pseudo[b] / self.scales[b] for b in self.classifier_branches], axis=1)
            if self.classifier_centering == "scan":
                # The median over the scan's sampled normal patches approximates the
                # median over all its patches, which extract() subtracts at test time.
                for scan in np.unique(data.normal_scan):
                    centre = np.median(x_normal[data.normal_scan == scan], axis=0)
                    x_normal[data.normal_scan == scan] -= centre
                    x_pseudo[data.pseudo_scan == scan] -= centre
            features = np.concatenate([x_normal, x_pseudo]).astype(np.float32)
            labels = np.concatenate([np.zeros(len(x_normal)), np.ones(len(x_pseudo))])
            self.classifier = NormalcyClassifier(features.shape[1], seed=self.seed).to(self.device)
            classifier_loss = fit_classifier(
                self.classifier, features, labels, epochs=self.classifier_epochs,
                seed=self.seed, progress=progress,
            )
        self.training_info = {
            "n_normal_patches": int(len(data.normal_points)),
            "n_pseudo_patches": int(len(data.pseudo_points)),
            "n_variants": int(data.n_variants),
            "encoder_loss": [round(v, 6) for v in history],
            "classifier_loss": [round(v, 6) for v in classifier_loss],
            "seconds": round(time.perf_counter() - started, 2),
        }
        logger.info("3dzal backend trained in %.1f s: %s", time.perf_counter() - started,
                    {k: v for k, v in self.training_info.items() if not k.endswith("loss")})

    def _require_trained(self) -> None:
        if not self.scales:
            raise RuntimeError(
                "the 3dzal backend is not trained; call fit() with normal scans first "
                "(ZeroShotModel.fit does this)."
            )

    # Extraction and scoring -------------------------------------------------------------

    def extract(self, sample: Any) -> PatchFeatures:
        """Return the concatenated, scaled branch features of one preprocessed scan."""
        self._require_trained()
        arrays, base = self._branch_arrays(sample)

        def stack(branches):
            parts = [arrays[b] / self.scales[b] for b in branches]
            return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

        aux = None
        if self.classifier is not None:
            aux = stack(self.classifier_branches)
            if self.classifier_centering == "scan" and base.patch_valid.any():
                aux -= np.median(aux[base.patch_valid], axis=0)
        return PatchFeatures(features=stack(self.bank_branches), patch_valid=base.patch_valid,
                             grid_shape=base.grid_shape, valid=base.valid, aux=aux)

    def patch_scores(self, features: np.ndarray, aux: np.ndarray | None = None) -> np.ndarray:
        """Classifier probability of "pseudo anomaly" after one adversarial step, per patch.

        ``aux`` holds the classifier branches of the same rows (``PatchFeatures.aux``).
        """
        if self.classifier is None:
            return np.zeros(len(features), np.float32)
        if aux is None:
            raise ValueError(
                "patch_scores needs the classifier features (PatchFeatures.aux) of the "
                "rows; pass the aux array that extract() returned."
            )
        subset = np.ascontiguousarray(aux, np.float32)
        return np.asarray(adversarial_scores(self.classifier, subset, eta=self.eta),
                          np.float32)

    # State ------------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Learned weights and branch scales as NumPy arrays (saved in the model file)."""
        self._require_trained()
        arrays: dict[str, np.ndarray] = {
            "scales": np.array([self.scales.get(b, 0.0) for b in BRANCHES], np.float64),
        }
        if self.encoder is not None:
            for key, value in self.encoder.state_dict().items():
                arrays[f"encoder.{key}"] = value.detach().cpu().numpy()
        if self.classifier is not None:
            for key, value in self.classifier.state_dict().items():
                arrays[f"classifier.{key}"] = value.detach().cpu().numpy()
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore weights written by :meth:`state`."""
        if "scales" not in arrays:
            raise ValueError("3dzal backend state lacks the branch scales.")
        scales = np.asarray(arrays["scales"], np.float64)
        self.scales = {b: float(s) for b, s in zip(BRANCHES, scales) if b in self.branches}
        encoder = {k[len("encoder."):]: torch.as_tensor(v) for k, v in arrays.items()
                   if k.startswith("encoder.")}
        classifier = {k[len("classifier."):]: torch.as_tensor(v) for k, v in arrays.items()
                      if k.startswith("classifier.")}
        if self.encoder is not None:
            self.encoder.load_state_dict(encoder)
            self.encoder.eval()
        if classifier:
            in_dim = sum(d for b, d in self.branch_dims.items() if b in self.classifier_branches)
            self.classifier = NormalcyClassifier(in_dim, seed=self.seed).to(self.device)
            self.classifier.load_state_dict(classifier)
            self.classifier.eval()


def register() -> None:
    """Register the ``3dzal`` backend with ``zal3d_core``'s registry."""
    register_backend("3dzal", ZAL3DBackend)
