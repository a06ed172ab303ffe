"""The zero-shot job: fit on normal scans of one class, evaluate on the other classes.

:func:`run_zero_shot` runs the train x test matrix on a dataset in the MVTec 3D-AD
layout and writes ``results.json``, ``results.csv``, ``results.md`` (tables laid out as
train class x test class, AU-PRO and image AUROC, with a mean column),
``timings.json`` and heatmap PNGs. Everything except ``timings.json`` is identical for
the same data folder, settings and seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import iterate_with_progress
from ._version import __version__
from .backend import PatchFeatures, backend_digest, get_backend
from .io import make_folder
from .model import ZeroShotModel
from .report import csv_text, heatmap_panel, markdown_tables

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "FeatureCache", "RunConfig", "default_cache_dir",
           "check_methods", "parse_class_spec", "run_zero_shot"]

# A method is a backend plus its defaults. "btf" is FPFH + PatchCore (Horwitz and
# Hoshen); "3dzal" is the full method of zal3d_torch.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "btf": ("fpfh", {}),
    "3dzal": ("3dzal", {}),
}

RESULT_COLUMNS = ("method", "train", "test", "n_test", "n_defective", "au_pro",
                  "image_auroc", "pixel_auroc")


def default_cache_dir() -> Path:
    """Per-user cache folder: ``$ZAL3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/zal3d``, else ``~/.cache/zal3d``."""
    if os.environ.get("ZAL3D_CACHE_DIR"):
        return Path(os.environ["ZAL3D_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zal3d"


def check_methods(methods: Sequence[str]) -> None:
    """Raise ValueError unless ``methods`` names at least one known method or backend."""
    from .backend import available_backends

    if not methods:
        raise ValueError(
            "methods is empty; pass at least one method, e.g. 'btf' or '3dzal'."
        )
    for method in methods:
        if method not in METHODS and method not in available_backends():
            raise ValueError(
                f"unknown method {method!r}; choose from {', '.join(METHODS)} or a "
                f"backend ({', '.join(available_backends())})."
            )


def parse_class_spec(spec: str | Sequence[str], known: Sequence[str], *, name: str) -> list[str]:
    """Turn ``"all"``, ``"a,b"`` or a list of names into a list of known class names."""
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
    else:
        items = [str(part).strip() for part in spec]
    if not items:
        raise ValueError(f"{name} is empty; pass a class name, a comma-separated list or 'all'.")
    if items == ["all"]:
        return list(known)
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(
            f"{name} names unknown classes {unknown}; the dataset has: {', '.join(known)}."
        )
    return list(dict.fromkeys(items))


@dataclasses.dataclass
class RunConfig:
    """Settings of one zero-shot run (see ``zal3d zero-shot --help``)."""

    data_root: Path
    out_dir: Path
    train_class: str | Sequence[str] = "all"
    test_classes: str | Sequence[str] = "all"
    methods: Sequence[str] = ("btf",)
    # Backend keyword arguments per method name, e.g. {"btf": {"search": "tree"}}.
    backend_config: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    coreset_ratio: float = 0.1
    seed: int = 0
    n_reweight: int = 3
    sigma: float = 4.0
    # Fusion weights of models with a classifier (3dzal); the others ignore them.
    weight_distance: float = 1.0
    weight_classifier: float = 1.0
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache_dir: Path | None = None
    use_cache: bool = True
    n_heatmaps: int = 3
    progress: bool = False


class FeatureCache:
    """Patch features of preprocessed samples, in memory and on disk.

    A disk entry is keyed by the sample's files (absolute path, size, modification
    time), the preprocessing settings, the backend's digest (name, settings, learned
    weights) and the zal3d version. Entries are written to a temporary file and
    renamed, so no half-written entry is ever read; an unreadable entry is recomputed.
    """

    def __init__(self, directory: Path | None, enabled: bool = True):
        self.directory = None if directory is None or not enabled else Path(directory) / "features"
        self.memory: dict[str, tuple[PatchFeatures, np.ndarray | None]] = {}
        self.hits = 0
        self.misses = 0
        # Cleared by the first failed write, so that a full disk or a cache path
        # that is a file gives one warning, not one per scan.
        self.writable = True

    @staticmethod
    def key(record: Any, preprocess: dict[str, Any], digest: str) -> str:
        files = []
        for path in sorted(str(record.file(m)) for m in record.available()):
            stat = os.stat(path)
            files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        blob = json.dumps(
            {"files": files, "preprocess": preprocess, "backend": digest,
             "version": __version__},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> tuple[PatchFeatures, np.ndarray | None] | None:
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        if self.directory is None:
            return None
        path = self.directory / key[:2] / f"{key}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                features = PatchFeatures(
                    features=data["features"],
                    patch_valid=data["patch_valid"],
                    grid_shape=tuple(int(v) for v in data["grid_shape"]),
                    valid=data["valid"],
                    aux=data["aux"] if "aux" in data.files else None,
                )
                gt = data["gt"] if "gt" in data.files else None
        except Exception as error:  # a damaged entry is recomputed, never trusted
            logger.warning("ignoring unreadable cache entry %s: %s", path, error)
            return None
        self.hits += 1
        self.memory[key] = (features, gt)
        return features, gt

    def put(self, key: str, features: PatchFeatures, gt: np.ndarray | None) -> None:
        self.misses += 1
        self.memory[key] = (features, gt)
        if self.directory is None or not self.writable:
            return
        from .io import atomic_save_npz

        arrays = {
            "features": features.features,
            "patch_valid": features.patch_valid,
            "grid_shape": np.asarray(features.grid_shape, np.int64),
            "valid": features.valid,
        }
        if gt is not None:
            arrays["gt"] = gt
        if features.aux is not None:
            arrays["aux"] = features.aux
        try:
            folder = self.directory / key[:2]
            folder.mkdir(parents=True, exist_ok=True)
            atomic_save_npz(folder / f"{key}.npz", **arrays)
        except OSError as error:
            self.writable = False
            logger.warning(
                "could not write cache entry %s: %s. No more entries are written in "
                "this run; pass --cache-dir with a writable folder, or --no-cache.",
                key,
                error,
            )


def _sample_features(model, record, cache: FeatureCache, digest: str):
    """Patch features and the preprocessed gt of one sample record, cached."""
    key = cache.key(record, model.preprocess_config, digest)
    cached = cache.get(key)
    if cached is not None:
        return cached
    sample = model.preprocess(record.load())
    features = model.extract(sample, preprocessed=True)
    gt = None if sample.gt is None else np.asarray(sample.gt, bool)
    cache.put(key, features, gt)
    return features, gt


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in text)


def _metric(function, *args) -> float:
    import warnings

    from .metrics import UndefinedMetricWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        value = function(*args)
    for warning in caught:
        logger.warning("%s", warning.message)
    return float(value)


def _environment() -> dict[str, Any]:
    import numba
    import scipy

    return {
        "zal3d": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }


def _evaluate_class(model, method, train_label, test_class, records, cache, digest,
                    config, heatmap_dir, timings):
    from .metrics import au_pro, auroc, pixel_auroc

    started = time.perf_counter()
    maps, gts, labels, scores = [], [], [], []
    steps = iterate_with_progress(records, desc=f"{train_label} -> {test_class}",
                                  enabled=config.progress)
    for record in steps:
        features, gt = _sample_features(model, record, cache, digest)
        prediction = model.predict_features(features)
        if gt is None:
            gt = np.zeros(prediction.anomaly_map.shape, bool)
        maps.append(prediction.anomaly_map)
        gts.append(gt)
        labels.append(record.label)
        scores.append(prediction.image_score)
    image_scores = np.asarray(scores, np.float64)
    # A sample whose map has no finite pixel cannot be ranked; score it lowest so
    # AUROC stays defined, and say so.
    missing = ~np.isfinite(image_scores)
    if missing.any():
        logger.warning("%d test samples of %s have no valid pixels; scored as 0",
                       int(missing.sum()), test_class)
        image_scores[missing] = 0.0
    row = {
        "method": method,
        "train": train_label,
        "test": test_class,
        "n_test": len(records),
        "n_defective": int(sum(labels)),
        "au_pro": _metric(au_pro, gts, maps),
        "image_auroc": _metric(auroc, np.asarray(labels), image_scores),
        "pixel_auroc": _metric(pixel_auroc, gts, maps),
    }
    timings[f"{method}/{train_label}/{test_class}"] = time.perf_counter() - started
    if config.n_heatmaps > 0:
        _write_heatmaps(model, records, maps, gts, heatmap_dir / _safe_name(test_class),
                        config.n_heatmaps)
    return row


def _heatmap_choice(records, count: int) -> list[int]:
    """Indices of up to ``count`` samples: defective ones of distinct types first, then a good one."""
    chosen: list[int] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.label == 1 and record.defect not in seen and len(chosen) < max(count - 1, 1):
            chosen.append(index)
            seen.add(record.defect)
    for index, record in enumerate(records):
        if len(chosen) >= count:
            break
        if index not in chosen and (record.label == 0 or len(chosen) < count - 1):
            chosen.append(index)
    return sorted(chosen[:count])


def _write_heatmaps(model, records, maps, gts, folder: Path, count: int) -> None:
    from .io import write_png
    from .report import depth_image

    finite = np.concatenate([m[np.isfinite(m)] for m in maps]) if maps else np.zeros(0)
    if finite.size == 0:
        return
    vmin, vmax = float(np.percentile(finite, 1)), float(np.percentile(finite, 99.9))
    folder.mkdir(parents=True, exist_ok=True)
    for index in _heatmap_choice(records, count):
        sample = model.preprocess(records[index].load())
        image = sample.rgb if getattr(sample, "rgb", None) is not None else depth_image(sample.xyz)
        if image.shape[:2] != maps[index].shape:
            image = depth_image(sample.xyz)
        panel = heatmap_panel(image, gts[index], maps[index], vmin=vmin, vmax=vmax)
        write_png(folder / f"{_safe_name(records[index].defect)}_{index:03d}.png", panel)


def _records(dataset, class_name: str, split: str, defects=None):
    return dataset.samples(class_name, split, defects)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _usable_classes(dataset, classes: Sequence[str]) -> dict[str, str]:
    """Return ``{class: reason}`` for the classes whose scans cannot be scored.

    Every method scores xyz, so a class whose train or test split lacks xyz files (a
    partial MVTec 3D-AD download, or an rgb-only folder) cannot be used.
    """
    unusable = {}
    for name in classes:
        for split, defects in (("train", ["good"]), ("test", None)):
            try:
                _records(dataset, name, split, defects)
            except FileNotFoundError as error:
                unusable[name] = str(error).splitlines()[0]
                break
            except ValueError:
                # A class without this split: the plan below reports it by name.
                continue
    return unusable


def _plan(config: RunConfig, dataset) -> list[tuple[list[str], list[str]]]:
    """Return ``[(train group, test classes), ...]`` after checking every class.

    Raises ValueError before any work is done when a requested class cannot be used or
    when nothing would be evaluated.
    """
    classes = dataset.classes
    train = parse_class_spec(config.train_class, classes, name="train_class")
    # "all" trains one model per class; an explicit list pools the classes into one.
    every_class = config.train_class == "all"
    requested_tests = parse_class_spec(config.test_classes, classes, name="test_classes")
    all_tests = config.test_classes == "all"
    unusable = _usable_classes(dataset, sorted(set(train) | set(requested_tests)))
    for name, reason in unusable.items():
        if (name in train and not every_class) or (name in requested_tests and not all_tests):
            raise ValueError(f"class {name!r} cannot be scored: {reason}")
    train = [c for c in train if c not in unusable]
    requested_tests = [c for c in requested_tests if c not in unusable]
    groups = [[c] for c in train] if every_class else [train]
    plan = []
    for group in groups:
        if all_tests:
            tests = [c for c in requested_tests if c not in group]
        else:
            tests = list(requested_tests)
            seen = [c for c in tests if c in group]
            if seen:
                logger.warning(
                    "test classes %s are also training classes of %s: their results "
                    "are not zero-shot", seen, "+".join(group),
                )
        if group and tests:
            plan.append((group, tests))
    skipped = "; ".join(f"{name} skipped: {reason}" for name, reason in unusable.items())
    if not plan:
        raise ValueError(
            f"nothing to evaluate: training on {config.train_class!r} leaves no test "
            f"class among {', '.join(classes)} that has xyz scans. Zero-shot evaluation "
            "needs at least two classes with xyz; pass --test-classes to choose them."
            + (f" ({skipped})" if skipped else "")
        )
    for name, reason in unusable.items():
        logger.warning("class %s is skipped: %s", name, reason)
    return plan


class _ResultWriter:
    """Writes results.json, .csv and .md after every row, so a failure loses nothing."""

    def __init__(self, out_dir: Path, config: RunConfig, classes: Sequence[str]):
        self.out_dir = out_dir
        self.classes = list(classes)
        self.rows: list[dict[str, Any]] = []
        self.header = {
            "zal3d_version": __version__,
            "config": {
                "data_root": str(Path(config.data_root).resolve()),
                "train_class": config.train_class if isinstance(config.train_class, str)
                else list(config.train_class),
                "test_classes": config.test_classes if isinstance(config.test_classes, str)
                else list(config.test_classes),
                "methods": list(config.methods),
                "backend_config": config.backend_config,
                "coreset_ratio": config.coreset_ratio,
                "seed": config.seed,
                "n_reweight": config.n_reweight,
                "sigma": config.sigma,
                "weight_distance": config.weight_distance,
                "weight_classifier": config.weight_classifier,
                "preprocess": config.preprocess,
            },
        }
        self.title = f"# Zero-shot results ({', '.join(config.methods)})\n\n"

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def results(self) -> dict[str, Any]:
        return {**self.header, "results": [_json_row(row) for row in self.rows]}

    def write(self) -> None:
        from .io import atomic_write_text

        atomic_write_text(self.out_dir / "results.json",
                          json.dumps(self.results(), indent=2, sort_keys=True) + "\n")
        atomic_write_text(self.out_dir / "results.csv", csv_text(self.rows, RESULT_COLUMNS))
        atomic_write_text(self.out_dir / "results.md",
                          self.title + markdown_tables(self.rows, classes=self.classes))


def _fit_model(method, group, backend_config, dataset, cache, config, timings):
    backend_name, _ = METHODS.get(method, (method, {}))
    label = "+".join(group)
    started = time.perf_counter()
    model = ZeroShotModel(
        get_backend(backend_name, **backend_config),
        coreset_ratio=config.coreset_ratio, seed=config.seed,
        n_reweight=config.n_reweight, sigma=config.sigma,
        weight_distance=config.weight_distance, weight_classifier=config.weight_classifier,
        preprocess=config.preprocess or None,
    )
    train_records = [r for c in group for r in _records(dataset, c, "train", ["good"])]
    if not train_records:
        raise ValueError(f"class {label} has no train/good samples to fit on.")
    logger.info("[%s] fitting on %s: %d normal samples", method, label, len(train_records))
    if callable(getattr(model.backend, "fit", None)):
        steps = iterate_with_progress(train_records, desc=f"preprocess {label}",
                                      enabled=config.progress)
        prepared = [model.preprocess(r.load()) for r in steps]
        model.backend.fit(prepared, progress=config.progress)
        logger.info("[%s] %s: extracting features of %d training samples", method, label,
                    len(train_records))
    digest = backend_digest(model.backend)
    steps = iterate_with_progress(train_records, desc=f"features {label}",
                                  enabled=config.progress)
    train_features = [
        _sample_features(model, record, cache, digest)[0] for record in steps
    ]
    model.fit_features(train_features, progress=config.progress)
    timings[f"{method}/{label}/fit"] = time.perf_counter() - started
    logger.info("[%s] %s: bank %d of %d patches in %.1f s", method, label,
                model.fit_info["n_bank"], model.fit_info["n_patches"],
                timings[f"{method}/{label}/fit"])
    return model, digest


def run_zero_shot(config: RunConfig) -> dict[str, Any]:
    """Run the zero-shot train x test matrix and write the result files.

    Every class and setting is checked before any model is fitted. The result files
    are rewritten after each (train, test) pair, so an interrupted run keeps the pairs
    it finished. Returns the content of ``results.json``.

    Raises
    ------
    ValueError
        If a method, class or setting is invalid, a requested class has no xyz scans,
        nothing is left to evaluate, or ``out_dir`` or ``cache_dir`` lies inside the
        dataset folder (which is never written).
    """
    from .datasets import MVTec3D
    from .io import atomic_write_text

    started = time.perf_counter()
    check_methods(config.methods)
    dataset = MVTec3D(config.data_root)
    data_root = Path(config.data_root)
    cache_dir = Path(config.cache_dir or default_cache_dir())
    for name, folder in (("out_dir", Path(config.out_dir)), ("cache_dir", cache_dir)):
        if _inside(folder, data_root):
            raise ValueError(
                f"{name} {folder} lies inside the dataset folder {data_root}, which "
                "zal3d never writes into; choose a folder outside it."
            )
    plan = _plan(config, dataset)
    backend_configs = {}
    for method in config.methods:
        backend_name, defaults = METHODS.get(method, (method, {}))
        backend_configs[method] = {**defaults, **config.backend_config.get(method, {})}
        # Build each backend once now, so a bad setting fails before any work.
        get_backend(backend_name, **backend_configs[method])

    out_dir = make_folder(config.out_dir, "out_dir")
    cache = FeatureCache(cache_dir, enabled=config.use_cache)
    writer = _ResultWriter(out_dir, config, dataset.classes)
    timings: dict[str, float] = {}
    for method in config.methods:
        for group, tests in plan:
            label = "+".join(group)
            model, digest = _fit_model(method, group, backend_configs[method], dataset,
                                       cache, config, timings)
            for test_class in tests:
                records = _records(dataset, test_class, "test")
                if not records:
                    logger.warning("class %s has no test samples; skipped", test_class)
                    continue
                row = _evaluate_class(
                    model, method, label, test_class, records, cache, digest, config,
                    out_dir / "heatmaps" / method / _safe_name(label), timings,
                )
                writer.add(row)
                logger.info("[%s] %s -> %s: AU-PRO %.3f, image AUROC %.3f", method, label,
                            test_class, row["au_pro"], row["image_auroc"])
    if not writer.rows:
        raise ValueError("no test class had test samples; nothing was evaluated.")

    timings["total"] = time.perf_counter() - started
    atomic_write_text(
        out_dir / "timings.json",
        json.dumps({"seconds": timings, "cache_hits": cache.hits, "cache_misses": cache.misses,
                    "environment": _environment()}, indent=2, sort_keys=True) + "\n",
    )
    logger.info("wrote %d results to %s in %.1f s", len(writer.rows), out_dir,
                timings["total"])
    return writer.results()


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in row.items()}
