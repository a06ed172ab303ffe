"""A fitted zero-shot model: memory bank, scoring, save and load without pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import iterate_with_progress
from ._version import __version__
from .backend import FeatureBackend, PatchFeatures, backend_digest, get_backend
from .coreset import greedy_coreset
from .scoring import MAX_SIGMA_PER_SIDE, anomaly_map, nearest_neighbor_scores
from ._validation import check_int, check_positive, check_seed

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "ZeroShotModel", "MODEL_FORMAT", "MODEL_FORMAT_VERSION"]

MODEL_FORMAT = "zal3d-model"
MODEL_FORMAT_VERSION = 1

DEFAULT_PREPROCESS = {"size": 224, "remove_plane": True, "cluster": False}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Anomaly scores of one sample.

    Attributes
    ----------
    anomaly_map : ndarray of shape (H, W), float32
        Pixel scores of the preprocessed sample, NaN where it has no point.
    image_score : float
        Image-level score (the maximum of the distance map, plus the weighted maximum
        classifier score when the backend has a classifier).
    patch_scores : ndarray of shape (n_patches,), float32
        Fused patch scores, NaN for patches without object points.
    """

    anomaly_map: np.ndarray
    image_score: float
    patch_scores: np.ndarray


def _check_preprocess(preprocess: Any) -> dict[str, Any]:
    """Check that the keys of ``preprocess`` are arguments of ``preprocess_sample``."""
    from .preprocess import preprocess_sample

    if preprocess is None:
        return {}
    if not isinstance(preprocess, dict):
        raise TypeError(
            f"preprocess must be a dict of preprocess_sample arguments, but got "
            f"{type(preprocess).__name__} {preprocess!r}."[:300]
        )
    known = [
        name
        for name, parameter in inspect.signature(preprocess_sample).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(preprocess) - set(known))
    if unknown:
        raise ValueError(
            f"preprocess has unknown keys {unknown}; preprocess_sample takes "
            f"{', '.join(known)}."
        )
    return preprocess


class ZeroShotModel:
    """Memory-bank anomaly model over the patch features of a backend.

    Parameters
    ----------
    backend : str or FeatureBackend, default "fpfh"
        A registered backend name (built with ``backend_config``) or an instance.
    backend_config : dict, optional
        Keyword arguments for the backend factory.
    coreset_ratio : float, default 0.1
        Share of the normal patches kept in the memory bank by greedy coreset
        selection. Ignored when ``coreset_n`` is given; 1.0 keeps every patch.
    coreset_n : int, optional
        Number of bank rows to keep instead of a ratio.
    projection_dim : int, default 128
        Random projection used during coreset selection.
    seed : int, default 0
        Seed of the coreset projection (and of trainable backends).
    n_reweight : int, default 3
        Size of the PatchCore re-weighting support (1 disables re-weighting).
    sigma : float, default 4.0
        Gaussian blur of the anomaly map, in pixels of the preprocessed sample.
    weight_distance, weight_classifier : float, default 1.0
        Weights of the distance and classifier scores when the backend has a
        classifier (``patch_scores``).
    preprocess : dict, optional
        Keyword arguments of :func:`zal3d_core.preprocess.preprocess_sample`;
        default ``{"size": 224, "remove_plane": True, "cluster": False}``.
    """

    def __init__(
        self,
        backend: str | FeatureBackend = "fpfh",
        backend_config: dict[str, Any] | None = None,
        *,
        coreset_ratio: float = 0.1,
        coreset_n: int | None = None,
        projection_dim: int = 128,
        seed: int = 0,
        n_reweight: int = 3,
        sigma: float = 4.0,
        weight_distance: float = 1.0,
        weight_classifier: float = 1.0,
        preprocess: dict[str, Any] | None = None,
    ):
        if isinstance(backend, str):
            backend = get_backend(backend, **(backend_config or {}))
        elif not isinstance(backend, FeatureBackend):
            raise TypeError(
                "backend must be a backend name or an object with name, feature_dim, "
                f"extract() and config(), but got {type(backend).__name__}."
            )
        self.backend = backend
        self.coreset_ratio = check_positive(coreset_ratio, "coreset_ratio")
        if self.coreset_ratio > 1:
            raise ValueError(
                f"coreset_ratio must be in (0, 1], but got {coreset_ratio!r}."
            )
        self.coreset_n = None if coreset_n is None else check_int(coreset_n, "coreset_n", minimum=1)
        self.projection_dim = check_int(projection_dim, "projection_dim", minimum=1)
        self.seed = check_seed(seed)
        self.n_reweight = check_int(n_reweight, "n_reweight", minimum=1)
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        self.weight_distance = check_positive(weight_distance, "weight_distance", allow_zero=True)
        self.weight_classifier = check_positive(
            weight_classifier, "weight_classifier", allow_zero=True
        )
        self.preprocess_config = dict(DEFAULT_PREPROCESS)
        self.preprocess_config.update(_check_preprocess(preprocess))
        size = self.preprocess_config.get("size")
        if size is not None:
            # The same bound as anomaly_map, checked here so that a bad sigma fails
            # before fitting rather than at the first prediction.
            from .preprocess import _check_size

            largest = MAX_SIGMA_PER_SIDE * max(_check_size(size))
            if self.sigma > largest:
                raise ValueError(
                    f"sigma must be at most {MAX_SIGMA_PER_SIDE} times the larger side "
                    f"of the preprocessed samples, {largest} pixels, but got "
                    f"{sigma!r}. Typical values are 2 to 8 pixels."
                )
        self.bank: np.ndarray | None = None
        self.distance_scale = 1.0
        self.fit_info: dict[str, Any] = {}

    # Preprocessing and features -------------------------------------------------

    def preprocess(self, sample: Any) -> Any:
        """Apply the model's preprocessing to a raw sample."""
        from .preprocess import preprocess_sample

        return preprocess_sample(sample, **self.preprocess_config)

    def extract(self, sample: Any, *, preprocessed: bool = False) -> PatchFeatures:
        """Return the patch features of a sample (preprocessing it first unless told)."""
        if not preprocessed:
            sample = self.preprocess(sample)
        return self.backend.extract(sample)

    @property
    def has_classifier(self) -> bool:
        """True when the backend scores patches with a classifier."""
        return callable(getattr(self.backend, "patch_scores", None))

    # Fitting ----------------------------------------------------------------------

    def fit(self, samples: Iterable[Any], *, progress: bool = False) -> ZeroShotModel:
        """Fit on raw normal samples: preprocess, train the backend if it learns, build the bank."""
        started = time.perf_counter()
        steps = iterate_with_progress(samples, desc="preprocess", enabled=progress)
        prepared = [self.preprocess(sample) for sample in steps]
        if not prepared:
            raise ValueError("fit needs at least one normal sample, but got none.")
        logger.info("preprocessed %d training samples in %.1f s", len(prepared),
                    time.perf_counter() - started)
        backend_fit = getattr(self.backend, "fit", None)
        if callable(backend_fit):
            backend_fit(prepared, progress=progress)
        steps = iterate_with_progress(prepared, desc="features", enabled=progress)
        features = [self.backend.extract(sample) for sample in steps]
        return self.fit_features(features, progress=progress)

    def fit_features(
        self, features: Sequence[PatchFeatures], *, progress: bool = False
    ) -> ZeroShotModel:
        """Build the memory bank from the patch features of normal samples."""
        if len(features) == 0:
            raise ValueError("fit_features needs at least one sample, but got none.")
        rows = [f.features[f.patch_valid] for f in features]
        full = np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.float32)
        if full.shape[0] == 0:
            raise ValueError(
                "the training samples hold no valid patches (every patch is empty); "
                "check the preprocessing, e.g. the background removal threshold."
            )
        if full.shape[1] != self.backend.feature_dim:
            raise ValueError(
                f"backend {self.backend.name!r} declares feature_dim="
                f"{self.backend.feature_dim}, but its features have {full.shape[1]} columns."
            )
        started = time.perf_counter()
        if self.coreset_n is not None:
            n_keep = min(self.coreset_n, full.shape[0])
        else:
            n_keep = max(1, int(full.shape[0] * self.coreset_ratio))
        if n_keep >= full.shape[0]:
            selected = np.arange(full.shape[0])
        else:
            selected = greedy_coreset(
                full, n=n_keep, projection_dim=self.projection_dim, seed=self.seed,
                progress=progress,
            )
        self.bank = np.ascontiguousarray(full[selected])
        logger.info(
            "memory bank: %d of %d patches (%d dims) in %.1f s",
            self.bank.shape[0], full.shape[0], full.shape[1], time.perf_counter() - started,
        )
        self.distance_scale = self._estimate_distance_scale(full, selected)
        self.fit_info = {
            "n_samples": len(features),
            "n_patches": int(full.shape[0]),
            "n_bank": int(self.bank.shape[0]),
            "feature_dim": int(full.shape[1]),
        }
        return self

    def _estimate_distance_scale(self, full: np.ndarray, selected: np.ndarray) -> float:
        """Median distance score of normal patches left out of the bank.

        The classifier score lies in [0, 1]; dividing the distance score by this scale
        puts a typical normal patch near 1 so the two weights are comparable. Without
        left-out patches (the bank keeps everything) the scale stays 1.
        """
        left_out = np.setdiff1d(np.arange(full.shape[0]), selected)
        if left_out.size == 0 or not self.has_classifier:
            return 1.0
        rng = np.random.default_rng(self.seed)
        pick = rng.choice(left_out, size=min(left_out.size, 2000), replace=False)
        scores = nearest_neighbor_scores(full[np.sort(pick)], self.bank, self.n_reweight)
        scale = float(np.median(scores))
        return scale if scale > 0 else 1.0

    # Prediction -------------------------------------------------------------------

    def _require_fitted(self) -> np.ndarray:
        if self.bank is None:
            raise RuntimeError("the model is not fitted; call fit() or load() first.")
        return self.bank

    def predict(self, sample: Any, *, preprocessed: bool = False) -> Prediction:
        """Score one raw sample (or a preprocessed one with ``preprocessed=True``)."""
        return self.predict_features(self.extract(sample, preprocessed=preprocessed))

    def predict_features(self, features: PatchFeatures) -> Prediction:
        """Score one sample's patch features."""
        bank = self._require_fitted()
        if features.feature_dim != bank.shape[1]:
            raise ValueError(
                f"features have {features.feature_dim} columns, but the memory bank has "
                f"{bank.shape[1]}; they come from different backends or settings."
            )
        n_patches = features.features.shape[0]
        distance = np.full(n_patches, np.nan, np.float32)
        valid_rows = np.flatnonzero(features.patch_valid)
        if valid_rows.size:
            distance[valid_rows] = nearest_neighbor_scores(
                features.features[valid_rows], bank, self.n_reweight
            )
        fused = distance
        classifier_max = 0.0
        if self.has_classifier and valid_rows.size:
            probability = np.full(n_patches, np.nan, np.float32)
            aux = None if features.aux is None else features.aux[valid_rows]
            probability[valid_rows] = self.backend.patch_scores(
                features.features[valid_rows], aux
            )
            # In the map the distance is taken relative to the sample's own median
            # patch distance. Zero-shot, a whole test object of another class is far
            # from the bank; what marks a defect is a patch far out relative to the
            # rest of its object, and on that scale (typical patch 1) the classifier
            # probability in [0, 1] carries comparable weight.
            median = float(np.median(distance[valid_rows]))
            relative = distance / (median if median > 0 else self.distance_scale)
            fused = (
                self.weight_distance * relative + self.weight_classifier * probability
            ).astype(np.float32)
            classifier_max = float(np.nanmax(probability))
        pixel_map = anomaly_map(
            fused, features.grid_shape, features.image_shape, features.valid,
            sigma=self.sigma,
        )
        if self.has_classifier:
            # The image score keeps the absolute distance (scaled by the normal training
            # patches), because a sample whose whole surface is far from the bank is
            # itself evidence of an anomaly.
            distance_map = anomaly_map(
                distance / self.distance_scale, features.grid_shape, features.image_shape,
                features.valid, sigma=self.sigma,
            )
            distance_max = _nanmax(distance_map)
            score = self.weight_distance * distance_max + self.weight_classifier * classifier_max
        else:
            score = _nanmax(pixel_map)
        return Prediction(anomaly_map=pixel_map, image_score=float(score), patch_scores=fused)

    # Saving and loading -----------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        bank = self._require_fitted()
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "zal3d_version": __version__,
            "backend": self.backend.name,
            "backend_config": self.backend.config(),
            "backend_digest": backend_digest(self.backend),
            "coreset_ratio": self.coreset_ratio,
            "coreset_n": self.coreset_n,
            "projection_dim": self.projection_dim,
            "seed": self.seed,
            "n_reweight": self.n_reweight,
            "sigma": self.sigma,
            "weight_distance": self.weight_distance,
            "weight_classifier": self.weight_classifier,
            "preprocess": self.preprocess_config,
            "distance_scale": self.distance_scale,
            "fit_info": self.fit_info,
            "bank_sha256": hashlib.sha256(bank.tobytes()).hexdigest(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the model to one ``.npz`` file (arrays and JSON metadata, no pickle).

        The file is written to a temporary name and renamed, so an interrupted save
        leaves an existing file intact.
        """
        from .io import atomic_save_npz, make_folder

        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"Cannot save the model to {path}: it is a folder. Pass a file name, "
                f"e.g. {path / 'model.npz'}."
            )
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {"bank": self._require_fitted()}
        state = getattr(self.backend, "state", None)
        if callable(state):
            for key, value in state().items():
                arrays[f"backend.{key}"] = np.asarray(value)
        make_folder(path.parent, "model folder")
        meta = json.dumps(self._metadata(), sort_keys=True)
        arrays["metadata"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
        atomic_save_npz(path, **arrays)
        logger.info("saved model to %s", path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ZeroShotModel:
        """Read a model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ValueError
            If the file is not a zal3d model, is truncated or corrupted, or has a
            format version this release cannot read.
        """
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"model file {path} is a folder. Pass the .npz file written by "
                "ZeroShotModel.save or `zal3d fit`."
            )
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it contains a single array, not an .npz archive")
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path} is not a valid zal3d model file (truncated, corrupted or of "
                f"another format): {error}"
            ) from None
        if "metadata" not in arrays or "bank" not in arrays:
            raise ValueError(
                f"{path} is not a zal3d model file: it lacks the 'metadata' and 'bank' "
                "entries. Write models with ZeroShotModel.save or `zal3d fit`."
            )
        try:
            meta = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} has corrupted metadata: {error}") from None
        if not isinstance(meta, dict):
            raise ValueError(
                f"{path} has corrupted metadata: expected a JSON object, but got "
                f"{type(meta).__name__}."
            )
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"{path} is not a zal3d model file (format {meta.get('format')!r})."
            )
        version = meta.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise ValueError(
                f"{path} has model format version {version!r}, but this zal3d "
                f"{__version__} reads version {MODEL_FORMAT_VERSION} only. Refit the "
                "model with this release or install the release that wrote it "
                f"(zal3d {meta.get('zal3d_version', 'unknown')})."
            )
        _check_metadata(meta, path)
        bank = arrays.pop("bank")
        if bank.ndim != 2 or not np.issubdtype(bank.dtype, np.floating):
            raise ValueError(
                f"{path} is corrupted: the memory bank must be a 2-D float array, but "
                f"it has shape {bank.shape} and dtype {bank.dtype}."
            )
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if hashlib.sha256(bank.tobytes()).hexdigest() != meta.get("bank_sha256"):
            raise ValueError(f"{path} is corrupted: the memory bank checksum does not match.")
        try:
            model = cls(
                meta["backend"],
                meta.get("backend_config") or {},
                coreset_ratio=meta["coreset_ratio"],
                coreset_n=meta.get("coreset_n"),
                projection_dim=meta["projection_dim"],
                seed=meta["seed"],
                n_reweight=meta["n_reweight"],
                sigma=meta["sigma"],
                weight_distance=meta.get("weight_distance", 1.0),
                weight_classifier=meta.get("weight_classifier", 1.0),
                preprocess=meta.get("preprocess"),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} has invalid settings: {error}") from None
        state = {key[len("backend."):]: value for key, value in arrays.items()
                 if key.startswith("backend.")}
        load_state = getattr(model.backend, "load_state", None)
        if state:
            if not callable(load_state):
                raise ValueError(
                    f"{path} holds learned backend weights, but backend "
                    f"{model.backend.name!r} cannot load them."
                )
            load_state(state)
        if backend_digest(model.backend) != meta.get("backend_digest"):
            raise ValueError(
                f"{path} is corrupted or was written by an incompatible backend: the "
                "backend checksum does not match."
            )
        model.bank = bank
        model.distance_scale = float(meta.get("distance_scale", 1.0))
        model.fit_info = meta.get("fit_info", {})
        return model


# Metadata entries that load() reads, and the JSON types each must have. Saving writes
# them all; missing or mistyped ones mean the file was edited or damaged.
_REQUIRED_METADATA = {
    "backend": (str,),
    "coreset_ratio": (int, float),
    "projection_dim": (int,),
    "seed": (int,),
    "n_reweight": (int,),
    "sigma": (int, float),
}
_OPTIONAL_METADATA = {
    "backend_config": (dict, type(None)),
    "coreset_n": (int, type(None)),
    "weight_distance": (int, float),
    "weight_classifier": (int, float),
    "preprocess": (dict, type(None)),
    "distance_scale": (int, float),
    "fit_info": (dict,),
}


def _check_metadata(meta: dict[str, Any], path: Path) -> None:
    """Raise ValueError naming the file if an entry is missing or has the wrong type."""
    missing = sorted(key for key in _REQUIRED_METADATA if key not in meta)
    if missing:
        raise ValueError(
            f"{path} is corrupted: its metadata lacks {', '.join(missing)}. Refit the "
            "model, or restore the file."
        )
    for table in (_REQUIRED_METADATA, _OPTIONAL_METADATA):
        for key, types in table.items():
            if key not in meta:
                continue
            value = meta[key]
            if isinstance(value, bool) or not isinstance(value, types):
                expected = " or ".join(
                    "null" if t is type(None) else t.__name__ for t in types
                )
                raise ValueError(
                    f"{path} is corrupted: metadata entry {key!r} must be {expected}, "
                    f"but got {type(value).__name__} {value!r}."[:400]
                )


def _nanmax(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else float("nan")
