"""Writers of demo datasets in the MVTec 3D-AD folder layout.

The layout is MVTec 3D-AD's::

    <root>/<class>/train/good/{xyz,rgb}/NNN.{tiff,png}
    <root>/<class>/validation/good/{xyz,rgb}/NNN.{tiff,png}
    <root>/<class>/test/<defect or good>/{xyz,rgb,gt}/NNN.{tiff,png}
    <root>/demo_manifest.json

Each sample has its own seed, derived from the dataset seed and the sample's class,
split, defect and number. A sample therefore does not change when other counts or
classes change. ``render_demo_sample(class, defect_type=..., size=..., seed=...)``
with the seed from the manifest renders it again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_int, check_points, check_seed
from .._version import __version__
from .defects import DEFECT_TYPES, MASK_THRESHOLD
from .render import FIELD_OF_VIEW, PROJECTOR_BASELINE, WORKING_DISTANCE, Camera
from .sample import (
    DEMO_CLASSES,
    DemoSample,
    _render,
    check_size,
)
from .shapes import PROCEDURAL_CLASSES, build_procedural, build_scan, canonical_scan

logger = logging.getLogger(__name__)

MANIFEST_NAME = "demo_manifest.json"
GENERATOR = "zal3d_core.demo"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")

# Real scans used by generate_real_geometry_dataset when no sources are given, as
# paths inside the data folder (ZAL3D_DATA, or shared/data beside the checkout).
DEFAULT_SCANS = {
    "bunny": "pcl_test/test/bunny.pcd",
    "milk": "pcl_test/test/milk.pcd",
    "cturtle": "pcl_test/test/cturtle.pcd",
    "milk_model": "pcl_data/tutorials/correspondence_grouping/milk.pcd",
    "object_template": "pcl_data/tutorials/template_alignment/object_template_0.pcd",
}

_CLASS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _data_dir() -> Path:
    """Return the real-data folder: ``$ZAL3D_DATA``, else shared/data beside the repo.

    The default is ``<checkout>/../shared/data``, as in ``tests/conftest.py``.
    """
    override = os.environ.get("ZAL3D_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


# --------------------------------------------------------------------------------------
# Argument checks


def _check_names(
    values: Any, name: str, known: tuple[str, ...], kind: str, kinds: str
) -> list[str]:
    """Check a str or an iterable of str against ``known``. None selects all of them."""
    if values is None:
        return list(known)
    if isinstance(values, str):
        values = [values]
    elif not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a str, a sequence of str or None, but got "
            f"{type(values).__name__}."
        )
    selected: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{name} must contain str, but got {value!r}.")
        if value not in known:
            raise ValueError(
                f"Unknown {kind} {value!r} in {name}. Known {kinds}: "
                f"{', '.join(known)}."
            )
        if value not in selected:
            selected.append(value)
    return selected


def _check_counts(**counts: Any) -> dict[str, int]:
    checked = {}
    for name, value in counts.items():
        value = check_int(value, name)
        if value < 0:
            raise ValueError(
                f"{name} must be a count >= 0, but got {value}. Pass 0 to write no "
                "samples of this kind."
            )
        checked[name] = value
    return checked


def _check_progress(progress: Any) -> bool:
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be a bool, but got {type(progress).__name__}.")
    return bool(progress)


def _check_root(root: Any) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(
            f"root must be a str or os.PathLike, but got {type(root).__name__}."
        )
    return Path(root)


# --------------------------------------------------------------------------------------
# Root folder: reject user data, clean a previous demo dataset


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable demo manifest ({error}). Delete the folder or "
            "pass another root."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        raise ValueError(
            f"{path} was not written by {GENERATOR}, so its folder may hold your own "
            "data. Pass an empty or new folder as root."
        )
    return manifest


def _remove_previous(root: Path, manifest: dict) -> None:
    """Delete the files and empty folders that a previous run listed in its manifest.

    Only paths relative to ``root`` that stay inside it are touched, and folders are
    removed only when empty, so files added by the user survive.
    """
    root_resolved = root.resolve()
    folders: set[Path] = set()
    removed = 0
    for sample in manifest.get("samples", []):
        for relative in sample.get("files", []):
            path = (root / relative).resolve()
            if root_resolved not in path.parents:
                raise ValueError(
                    f"The manifest in {root} lists {relative!r}, which lies outside "
                    "the folder. Delete the folder by hand or pass another root."
                )
            if path.is_file():
                path.unlink()
                removed += 1
            folders.update(p for p in path.parents if root_resolved in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (root / MANIFEST_NAME).unlink()
    logger.info("removed %d files of the previous demo dataset in %s", removed, root)


def _prepare_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"root {root} exists and is not a folder. Pass a folder path.")
    if root.is_dir() and any(root.iterdir()):
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ValueError(
                f"root {root} is a non-empty folder without {MANIFEST_NAME}, so it was "
                "not made by the demo generator. Pass an empty or new folder, so that "
                "no file of yours is overwritten."
            )
        _remove_previous(root, _read_manifest(manifest_path))
    root.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------
# Sample plan and seeds


def sample_seed(
    seed: int, class_name: str, split: str, category: str, index: int
) -> int:
    """Return the seed of one sample, derived from the dataset seed and its identity.

    Parameters
    ----------
    seed : int
        Dataset seed, >= 0.
    class_name, split, category : str
        Class folder, split (``"train"``, ``"validation"`` or ``"test"``) and defect
        folder (``"good"`` or a defect type) of the sample.
    index : int
        Sample number within its folder.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``. The class and defect names enter through CRC-32,
        which is stable across Python versions and runs (unlike ``hash``).
    """
    key = (
        zlib.crc32(class_name.encode("utf-8")),
        SPLITS.index(split),
        zlib.crc32(category.encode("utf-8")),
        index,
    )
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _plan(
    classes: list[str], counts: dict[str, int], defect_types: list[str], seed: int
) -> list[dict]:
    jobs = []
    for class_name in classes:
        groups = [
            ("train", "good", counts["n_train"]),
            ("validation", "good", counts["n_validation"]),
            ("test", "good", counts["n_test_good"]),
        ]
        groups += [("test", kind, counts["n_test_per_defect"]) for kind in defect_types]
        for split, category, count in groups:
            for index in range(count):
                number = f"{index:03d}"
                folder = f"{class_name}/{split}/{category}"
                files = [f"{folder}/xyz/{number}.tiff", f"{folder}/rgb/{number}.png"]
                if split == "test":
                    files.append(f"{folder}/gt/{number}.png")
                jobs.append(
                    {
                        "class": class_name,
                        "split": split,
                        "defect": category,
                        "number": number,
                        "seed": sample_seed(seed, class_name, split, category, index),
                        "files": files,
                    }
                )
    return jobs


# --------------------------------------------------------------------------------------
# Writing


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.warning(
            "progress=True, but tqdm is not installed, so no bar is shown. Install it "
            "with pip install tqdm."
        )
        return None
    return tqdm(total=total, desc="demo dataset", unit="sample", leave=False)


def _write_manifest(root: Path, manifest: dict) -> None:
    from ..io import atomic_write_text

    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def _write_sample(root: Path, job: dict, sample: DemoSample) -> None:
    from ..io import write_organized_tiff, write_png

    for relative in job["files"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
    write_organized_tiff(root / job["files"][0], sample.xyz)
    write_png(root / job["files"][1], sample.rgb)
    if len(job["files"]) > 2:
        write_png(root / job["files"][2], sample.gt)


def _generate(
    root: Path,
    jobs: list[dict],
    render: Callable[[dict], DemoSample],
    header: dict,
    progress: bool,
) -> Path:
    if not jobs:
        raise ValueError(
            "Nothing to generate: every count is 0 or no class is selected. Pass at "
            "least one positive count."
        )
    _prepare_root(root)
    started = time.perf_counter()
    logger.info(
        "writing %d demo samples of %d classes to %s",
        len(jobs),
        len(header["classes"]),
        root,
    )
    # The manifest lists every planned file before any is written, so a run that is
    # interrupted can be cleaned up and regenerated.
    manifest = {**header, "complete": False, "samples": jobs}
    _write_manifest(root, manifest)

    bar = _progress_bar(len(jobs), progress)
    samples = []
    try:
        for job in jobs:
            sample = render(job)
            _write_sample(root, job, sample)
            samples.append(
                {
                    **job,
                    "defect_pixels": int(sample.gt.sum()),
                    "defect_parameters": sample.defect_parameters,
                    "pose": sample.pose,
                }
            )
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    # No timings or paths of root go into the manifest, so it is byte-identical too.
    _write_manifest(root, {**header, "complete": True, "samples": samples})
    logger.info(
        "wrote %d demo samples to %s in %.1f s",
        len(jobs),
        root,
        time.perf_counter() - started,
    )
    return root


def _header(
    kind: str, seed: int, size: int, counts: dict, defect_types, classes
) -> dict:
    camera = Camera.for_size(size)
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "zal3d_version": __version__,
        "kind": kind,
        "seed": seed,
        "parameters": {"size": size, **counts, "defect_types": list(defect_types)},
        "camera": {
            "model": "pinhole at the origin looking along +z, x right, y down, metres",
            "size_px": size,
            "focal_px": camera.focal,
            "principal_point_px": [camera.centre, camera.centre],
            "working_distance_m": WORKING_DISTANCE,
            "field_of_view_m": FIELD_OF_VIEW,
            "projector_offset_m": [PROJECTOR_BASELINE, 0.0, 0.0],
        },
        "mask_rule": (
            "gt marks the pixels whose noise-free depth the defect moved by more than "
            f"{MASK_THRESHOLD * 1e3:g} mm, or whose measurability it changed"
        ),
        "classes": classes,
    }


def generate_demo_dataset(
    root: str | os.PathLike,
    *,
    classes: str | Iterable[str] | None = None,
    n_train: int = 10,
    n_validation: int = 2,
    n_test_good: int = 4,
    n_test_per_defect: int = 2,
    defect_types: str | Iterable[str] | None = None,
    size: int = 256,
    seed: Any = 0,
    progress: bool = False,
) -> Path:
    """Generate a small dataset of procedural objects in the MVTec 3D-AD layout.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder. It must be new, empty, or a folder written before by this
        generator, which contains its ``demo_manifest.json``. The files listed in
        that manifest are deleted first.
    classes : str, sequence of str or None, default None
        Classes to write, from ``DEMO_CLASSES``; None writes all of them.
    n_train, n_validation, n_test_good : int, default 10, 2 and 4
        Defect-free samples per class in train/good, validation/good and test/good.
    n_test_per_defect : int, default 2
        Test samples per class and defect type.
    defect_types : str, sequence of str or None, default None
        Defect types to write, from ``DEFECT_TYPES``; None writes all of them.
    size : int, default 256
        Image height and width in pixels, at least 32.
    seed : int or numpy.random.Generator, default 0
        Dataset seed. The same seed and parameters give byte-identical files.
    progress : bool, default False
        Show a tqdm progress bar over the samples, if tqdm is installed.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    ValueError
        If a class or defect type is unknown, a count is negative, ``size`` is below
        32, every count is 0, or ``root`` is a non-empty folder that this generator
        did not write.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    xyz files hold float32 camera coordinates in metres with all-zero pixels where no
    point was measured. gt files are mode-L PNGs with 0 for normal and 255 for defect
    pixels. See ``docs/demo_data.md`` for the object, defect and sensor models.

    Examples
    --------
    >>> from zal3d_core.demo import generate_demo_dataset
    >>> root = generate_demo_dataset("demo", classes="gear", size=64)  # doctest: +SKIP
    >>> sorted(p.name for p in (root / "gear" / "test").iterdir())  # doctest: +SKIP
    ['bump', 'contamination', 'crack', 'cut', 'dent', 'good', 'hole']
    """
    root = _check_root(root)
    selected = _check_names(classes, "classes", DEMO_CLASSES, "class", "classes")
    if not selected:
        raise ValueError(
            f"classes must name at least one of {', '.join(DEMO_CLASSES)}."
        )
    kinds = _check_names(
        defect_types, "defect_types", DEFECT_TYPES, "defect type", "defect types"
    )
    counts = _check_counts(
        n_train=n_train,
        n_validation=n_validation,
        n_test_good=n_test_good,
        n_test_per_defect=n_test_per_defect,
    )
    size = check_size(size)
    seed = check_seed(seed)
    progress = _check_progress(progress)

    jobs = _plan(selected, counts, kinds, seed)
    class_info = {
        name: {"description": PROCEDURAL_CLASSES[name].description} for name in selected
    }
    header = _header("procedural", seed, size, counts, kinds, class_info)

    def render(job):
        defect = None if job["defect"] == "good" else job["defect"]

        def build(generator, step):
            return build_procedural(job["class"], generator, step)

        rng = np.random.default_rng(job["seed"])
        return _render(build, defect, size, rng, True)

    return _generate(root, jobs, render, header, progress)


def _default_sources() -> dict[str, Path]:
    data = _data_dir()
    tried = {name: data / relative for name, relative in DEFAULT_SCANS.items()}
    found = {name: path for name, path in tried.items() if path.is_file()}
    if not found:
        listing = ", ".join(str(path) for path in tried.values())
        raise ValueError(
            f"No default scan found; tried {listing}. Pass sources={{'name': "
            "'scan.pcd', ...}} with .pcd, .ply or .npy files, or set ZAL3D_DATA to the "
            "folder that holds pcl_test/ and pcl_data/."
        )
    missing = sorted(set(tried) - set(found))
    if missing:
        logger.info("default scans not found, skipped: %s", ", ".join(missing))
    return found


def _load_sources(sources: Any) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Read each source (a point file or an (N, 3) array) and describe it."""
    if sources is None:
        sources = _default_sources()
    if not isinstance(sources, Mapping):
        raise TypeError(
            "sources must be a mapping of class name to a point-cloud file or an "
            f"(N, 3) array, but got {type(sources).__name__}."
        )
    if not sources:
        raise ValueError(
            "sources must name at least one class, but got an empty mapping."
        )
    points: dict[str, np.ndarray] = {}
    info: dict[str, dict] = {}
    for name, source in sources.items():
        if (
            not isinstance(name, str)
            or not _CLASS_NAME.match(name)
            or name in (".", "..")
        ):
            raise ValueError(
                f"Invalid class name {name!r} in sources: use letters, digits, '_', "
                "'-' and '.', not starting with '.' or '-', so that it is a valid "
                "folder name."
            )
        if isinstance(source, (str, os.PathLike)):
            from ..io import read_points

            cloud = read_points(source)
            described = {"source": str(source)}
        else:
            cloud = source
            described = {"source": "array"}
        cloud = check_points(cloud, f"sources[{name!r}]", min_points=50)
        points[name] = cloud
        info[name] = {**described, "n_points": len(cloud)}
    return points, info


def generate_real_geometry_dataset(
    root: str | os.PathLike,
    sources: Mapping[str, Any] | None = None,
    *,
    n_train: int = 8,
    n_validation: int = 2,
    n_test_good: int = 3,
    n_test_per_defect: int = 2,
    defect_types: str | Iterable[str] | None = None,
    size: int = 256,
    seed: Any = 0,
    progress: bool = False,
) -> Path:
    """Generate a dataset in the MVTec 3D-AD layout whose objects are real scans.

    Each class is one scanned object, put in its resting pose (thinnest principal
    axis up). Every sample scales it to a largest horizontal extent of 72 mm (within
    3 %), turns it by up to 15 degrees about the vertical and tilts it by up to 5
    degrees. Then it splats the points into a height grid and fills its small holes.
    Defects and the sensor model are those of :func:`generate_demo_dataset`.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder, with the same rules as in :func:`generate_demo_dataset`.
    sources : mapping of str to path or array, optional
        Class name to a point-cloud file (``.pcd``, ``.ply``, ``.npy``, read with
        :func:`zal3d_core.io.read_points`) or an ``(N, 3)`` array of at least 50
        points. By default, the PCL sample scans in the data folder (``ZAL3D_DATA``
        or ``shared/data`` beside the checkout) that exist: ``DEFAULT_SCANS``.
    n_train, n_validation, n_test_good, n_test_per_defect : int, default 8, 2, 3 and 2
        Samples per class, as in :func:`generate_demo_dataset`.
    defect_types, size, seed, progress
        As in :func:`generate_demo_dataset`.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    ValueError
        If no source is given and no default scan exists (the message lists the paths
        tried), a class name is not a valid folder name, a cloud has fewer than 50
        points, or as in :func:`generate_demo_dataset`.
    FileNotFoundError
        If a source file does not exist.
    """
    root = _check_root(root)
    kinds = _check_names(
        defect_types, "defect_types", DEFECT_TYPES, "defect type", "defect types"
    )
    counts = _check_counts(
        n_train=n_train,
        n_validation=n_validation,
        n_test_good=n_test_good,
        n_test_per_defect=n_test_per_defect,
    )
    size = check_size(size)
    seed = check_seed(seed)
    progress = _check_progress(progress)
    points, class_info = _load_sources(sources)

    names = list(points)
    scans = {name: canonical_scan(points[name]) for name in names}
    colour_index = {name: i for i, name in enumerate(names)}
    for name in names:
        class_info[name]["colour_index"] = colour_index[name]
    jobs = _plan(names, counts, kinds, seed)
    header = _header("real_geometry", seed, size, counts, kinds, class_info)

    def render(job):
        defect = None if job["defect"] == "good" else job["defect"]
        scan = scans[job["class"]]
        index = colour_index[job["class"]]

        def build(generator, step):
            return build_scan(scan, generator, step, index)

        rng = np.random.default_rng(job["seed"])
        return _render(build, defect, size, rng, True)

    return _generate(root, jobs, render, header, progress)
