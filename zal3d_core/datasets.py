"""The MVTec 3D-AD folder layout: sample records (paths only) and loaded samples.

The dataset stores one folder per class::

    <root>/<class>/<split>/<defect>/xyz/NNN.tiff   organized cloud, zero = no point
    <root>/<class>/<split>/<defect>/rgb/NNN.png    colour image of the same size
    <root>/<class>/<split>/<defect>/gt/NNN.png     defect mask (pixel = defect id)

with the splits ``train``, ``validation`` and ``test``, and the defect ``good`` for
defect-free samples. Training and validation samples have no ``gt`` folder, so a good
sample without a mask file gets an all-False mask.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_mask, read_organized, read_rgb

__all__ = ["MODALITIES", "SPLITS", "MVTec3D", "Sample", "SampleRecord"]

logger = logging.getLogger(__name__)

MODALITIES = ("xyz", "rgb", "gt")
SPLITS = ("train", "validation", "test")
GOOD = "good"

# File extensions per modality, in order of preference when several exist.
_EXTENSIONS = {"xyz": (".tiff", ".tif"), "rgb": (".png",), "gt": (".png",)}


def _check_modalities(modalities: Any, name: str = "modalities") -> tuple[str, ...]:
    if isinstance(modalities, str):
        raise TypeError(
            f"{name} must be a sequence of modality names, but got the str "
            f"{modalities!r}. Pass a tuple such as ({modalities!r},)."
        )
    try:
        requested = tuple(modalities)
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of modality names from {MODALITIES}, but got "
            f"{type(modalities).__name__} {modalities!r}."
        ) from None
    unknown = [m for m in requested if m not in MODALITIES]
    if unknown or not requested or len(set(requested)) != len(requested):
        raise ValueError(
            f"{name} must be a non-empty sequence of distinct names from {MODALITIES}, "
            f"but got {requested!r}."
        )
    return requested


def _sample_key(number: str) -> tuple[int, int, str]:
    # Numeric stems sort by value ("2" before "10"), any other stem after them by name.
    if number.isdigit():
        return (0, int(number), number)
    return (1, 0, number)


def _image_shape(path: Path) -> tuple[int, int]:
    """Read the (height, width) of an image or tiff from its header only."""
    if path.suffix.lower() in (".tiff", ".tif"):
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            shape = tiff.pages[0].shape
        return int(shape[0]), int(shape[1])
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return height, width


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """A loaded sample: arrays of the requested modalities and where they came from.

    Attributes
    ----------
    xyz : ndarray of shape (H, W, 3), float32, or None
        Organized cloud with NaN where no point was measured, or None if not loaded.
    rgb : ndarray of shape (H, W, 3), uint8, or None
        Colour image, or None if not loaded.
    gt : ndarray of shape (H, W), bool, or None
        True on defect pixels, all False for good samples, or None if not loaded.
    label : int
        0 for a good sample, 1 for a defective one.
    class_name, split, defect : str
        Where the sample sits in the dataset, e.g. ``"tire"``, ``"test"``, ``"hole"``.
    name : str
        ``"<split>/<defect>/<number>"``, e.g. ``"test/hole/003"``.
    path : pathlib.Path
        The xyz file, or the rgb file when xyz was not loaded. When only gt was loaded
        it is the gt file, or for a good sample without one the xyz or rgb file.
    """

    xyz: np.ndarray | None
    rgb: np.ndarray | None
    gt: np.ndarray | None
    label: int
    class_name: str
    split: str
    defect: str
    name: str
    path: Path

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool mask of the pixels with a measured point (non-NaN xyz)."""
        if self.xyz is None:
            raise ValueError(
                f"Sample {self.name!r} has no xyz loaded, so it has no valid-point "
                "mask. Load it with 'xyz' in modalities."
            )
        return ~np.isnan(self.xyz).any(axis=2)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the loaded arrays."""
        for array in (self.xyz, self.rgb, self.gt):
            if array is not None:
                return int(array.shape[0]), int(array.shape[1])
        raise ValueError(f"Sample {self.name!r} contains no arrays.")


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """Paths of one sample, without reading any file.

    Attributes
    ----------
    class_name, split, defect : str
    number : str
        File stem shared by the modality files, e.g. ``"003"``.
    xyz_path, rgb_path, gt_path : pathlib.Path or None
        The files present for this sample, or None where the file does not exist.
    modalities : tuple of str
        Modalities that :meth:`load` reads by default.
    """

    class_name: str
    split: str
    defect: str
    number: str
    xyz_path: Path | None
    rgb_path: Path | None
    gt_path: Path | None
    modalities: tuple[str, ...] = MODALITIES

    @property
    def name(self) -> str:
        """``"<split>/<defect>/<number>"``, e.g. ``"test/hole/003"``."""
        return f"{self.split}/{self.defect}/{self.number}"

    @property
    def label(self) -> int:
        """0 for a good sample, 1 for a defective one."""
        return 0 if self.defect == GOOD else 1

    def file(self, modality: str) -> Path | None:
        """Return the file of ``modality``, or None if the sample has none."""
        return {"xyz": self.xyz_path, "rgb": self.rgb_path, "gt": self.gt_path}[
            modality
        ]

    def available(self) -> tuple[str, ...]:
        """Return the modalities whose files exist for this sample."""
        return tuple(m for m in MODALITIES if self.file(m) is not None)

    def expected_file(self, modality: str) -> Path:
        """Return the path where the file of ``modality`` is or would be."""
        found = self.file(modality)
        if found is not None:
            return found
        folder = self._folder()
        return folder / modality / f"{self.number}{_EXTENSIONS[modality][0]}"

    def _folder(self) -> Path:
        for path in (self.xyz_path, self.rgb_path, self.gt_path):
            if path is not None:
                return path.parent.parent
        raise ValueError(f"Sample record {self.name!r} has no files.")

    def missing(self, modalities: Sequence[str]) -> list[str]:
        """Return the requested modalities whose file is missing.

        A good sample without a gt file misses nothing, because its mask is all False.
        """
        return [
            m
            for m in modalities
            if self.file(m) is None and not (m == "gt" and self.label == 0)
        ]

    def _missing_error(self, missing: Sequence[str], n_affected: int = 1) -> Exception:
        modality = missing[0]
        available = self.available()
        usable = tuple(
            m for m in MODALITIES if m in available or (m == "gt" and self.label == 0)
        )
        names = [
            "gt (a good sample needs no mask file: its mask is all False)"
            if m == "gt" and m not in available
            else m
            for m in usable
        ]
        if usable:
            hint = (
                f"Modalities that can be loaded: {', '.join(names)}. To load only "
                f"those, pass modalities={usable!r}, e.g. "
                f"MVTec3D(root, modalities={usable!r})."
            )
        else:
            hint = "No modality file was found for it."
        count = (
            f" ({n_affected} samples of this split lack it)" if n_affected > 1 else ""
        )
        return FileNotFoundError(
            f"Sample {self.name} of class {self.class_name!r} has no {modality} file: "
            f"{self.expected_file(modality)} does not exist{count}. {hint}"
        )

    def load(self, modalities: Iterable[str] | None = None) -> Sample:
        """Read the files of ``modalities`` (default: :attr:`modalities`).

        Raises
        ------
        FileNotFoundError
            If a requested modality has no file (a good sample's gt may be absent).
        ValueError
            If the arrays of the sample differ in height and width.
        """
        requested = _check_modalities(
            self.modalities if modalities is None else modalities
        )
        missing = self.missing(requested)
        if missing:
            raise self._missing_error(missing)

        xyz = read_organized(self.xyz_path) if "xyz" in requested else None
        rgb = read_rgb(self.rgb_path) if "rgb" in requested else None
        if xyz is not None and rgb is not None and xyz.shape[:2] != rgb.shape[:2]:
            raise ValueError(
                f"xyz of shape {xyz.shape} and rgb of shape {rgb.shape} differ in size "
                f"for sample {self.name}: {self.xyz_path} and {self.rgb_path}."
            )
        gt = self._load_gt(xyz, rgb) if "gt" in requested else None

        if "xyz" in requested:
            path = self.xyz_path
        elif "rgb" in requested:
            path = self.rgb_path
        else:
            path = self.gt_path or self.xyz_path or self.rgb_path
        logger.debug(
            "loaded %s %s (%s)", self.class_name, self.name, ", ".join(requested)
        )
        return Sample(
            xyz=xyz,
            rgb=rgb,
            gt=gt,
            label=self.label,
            class_name=self.class_name,
            split=self.split,
            defect=self.defect,
            name=self.name,
            path=path,
        )

    def _load_gt(self, xyz: np.ndarray | None, rgb: np.ndarray | None) -> np.ndarray:
        reference = xyz if xyz is not None else rgb
        if reference is not None:
            shape = reference.shape[:2]
            source = self.xyz_path if xyz is not None else self.rgb_path
            source_name = "xyz" if xyz is not None else "rgb"
        elif self.gt_path is None:
            # Good sample loaded as gt only: take its size from another file's header.
            other = self.xyz_path or self.rgb_path
            if other is None:
                raise ValueError(f"Sample {self.name} has no file to take a size from.")
            shape, source, source_name = _image_shape(other), other, "image"
        else:
            shape, source, source_name = None, None, ""
        if self.gt_path is None:
            return np.zeros(shape, dtype=bool)
        gt = read_mask(self.gt_path)
        if shape is not None and gt.shape != tuple(shape):
            raise ValueError(
                f"gt of shape {gt.shape} differs from the {source_name} shape "
                f"{tuple(shape)} of sample {self.name}: {self.gt_path} vs {source}. "
                "Masks must have the same height and width as the scan."
            )
        return gt


class MVTec3D:
    """Walker over an MVTec 3D-AD style folder tree.

    Listing samples only reads folder contents. Files are read by
    :meth:`SampleRecord.load` or :meth:`iter_samples`.

    Parameters
    ----------
    root : str or os.PathLike
        Folder that contains one folder per class, each with ``train``, ``validation``
        and/or ``test`` inside.
    modalities : sequence of str, default ("xyz", "rgb", "gt")
        Modalities to load. Listing samples checks that each has these files. Pass a
        subset such as ``("rgb", "gt")`` for copies without xyz.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    ValueError
        If ``root`` is not a folder or contains no class folders, or ``modalities`` is
        invalid.

    Examples
    --------
    >>> dataset = MVTec3D("mvtec3d", modalities=("rgb", "gt"))  # doctest: +SKIP
    >>> records = dataset.samples("tire", "test", defects=["hole"])  # doctest: +SKIP
    >>> sample = records[0].load()  # doctest: +SKIP
    >>> sample.name, sample.label, sample.gt.dtype  # doctest: +SKIP
    ('test/hole/000', 1, dtype('bool'))
    """

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] = MODALITIES):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                f"root must be a str or os.PathLike, but got {type(root).__name__}."
            )
        self.root = Path(root)
        self.modalities = _check_modalities(modalities)
        if not self.root.exists():
            raise FileNotFoundError(f"MVTec 3D-AD root folder not found: {self.root}")
        if not self.root.is_dir():
            raise ValueError(
                f"MVTec 3D-AD root must be a folder, but {self.root} is a file."
            )
        self._classes = sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and any((entry / split).is_dir() for split in SPLITS)
        )
        if not self._classes:
            entries = sorted(entry.name for entry in self.root.iterdir())[:10]
            raise ValueError(
                f"{self.root} contains no class folders. Expected <root>/<class>/"
                f"{{train,validation,test}}/<defect>/{{xyz,rgb,gt}}/NNN.*; found "
                f"{entries or 'an empty folder'}. Pass the folder that contains the "
                "class folders."
            )

    @property
    def classes(self) -> list[str]:
        """Sorted names of the class folders."""
        return list(self._classes)

    def _class_folder(self, class_name: Any) -> Path:
        if class_name not in self._classes:
            raise ValueError(
                f"Unknown class {class_name!r} in {self.root}. Known classes: "
                f"{', '.join(self._classes)}."
            )
        return self.root / class_name

    def splits(self, class_name: str) -> list[str]:
        """Return the splits present for ``class_name``, in the order train, validation, test."""
        folder = self._class_folder(class_name)
        return [split for split in SPLITS if (folder / split).is_dir()]

    def _split_folder(self, class_name: str, split: Any) -> Path:
        present = self.splits(class_name)
        if split not in present:
            raise ValueError(
                f"Unknown split {split!r} for class {class_name!r}. Splits present: "
                f"{', '.join(present)}."
            )
        return self.root / class_name / split

    def defect_types(self, class_name: str, split: str = "test") -> list[str]:
        """Return the sorted defect folder names of one split (``good`` included).

        Hidden folders (names starting with ".") are left out.
        """
        folder = self._split_folder(class_name, split)
        return sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        )

    def _select_defects(self, class_name: str, split: str, defects: Any) -> list[str]:
        known = self.defect_types(class_name, split)
        if defects is None:
            return known
        selected = [defects] if isinstance(defects, str) else list(defects)
        unknown = [d for d in selected if d not in known]
        if unknown:
            raise ValueError(
                f"Unknown defect types {unknown} for {class_name}/{split}. Known: "
                f"{', '.join(known)}."
            )
        return sorted(set(selected))

    def _records(self, class_name: str, split: str, defect: str, modalities) -> list:
        folder = self.root / class_name / split / defect
        files: dict[str, dict[str, Path]] = {}
        for modality in MODALITIES:
            modality_folder = folder / modality
            if not modality_folder.is_dir():
                continue
            for extension in reversed(_EXTENSIONS[modality]):
                for path in modality_folder.glob(f"*{extension}"):
                    # Hidden files such as macOS "._000.tiff" resource forks, and
                    # folders that happen to end in an extension, are not samples.
                    if path.name.startswith(".") or not path.is_file():
                        logger.debug("skipping %s: not a sample file", path)
                        continue
                    files.setdefault(path.stem, {})[modality] = path
        return [
            SampleRecord(
                class_name=class_name,
                split=split,
                defect=defect,
                number=number,
                xyz_path=files[number].get("xyz"),
                rgb_path=files[number].get("rgb"),
                gt_path=files[number].get("gt"),
                modalities=modalities,
            )
            for number in sorted(files, key=_sample_key)
        ]

    def samples(
        self,
        class_name: str,
        split: str = "test",
        defects: str | Iterable[str] | None = None,
        *,
        modalities: Sequence[str] | None = None,
    ) -> list[SampleRecord]:
        """List the samples of one class and split, sorted by defect then number.

        Parameters
        ----------
        class_name : str
        split : {"train", "validation", "test"}, default "test"
        defects : str or iterable of str, optional
            Defect types to keep (default: all, ``good`` included).
        modalities : sequence of str, optional
            Overrides the dataset's modalities for these records.

        Raises
        ------
        ValueError
            If the class, the split or a defect type is unknown.
        FileNotFoundError
            If a sample lacks the file of a requested modality. The message names the
            file and the modalities present.
        """
        modalities = (
            self.modalities if modalities is None else _check_modalities(modalities)
        )
        self._split_folder(class_name, split)
        records: list[SampleRecord] = []
        for defect in self._select_defects(class_name, split, defects):
            records.extend(self._records(class_name, split, defect, modalities))
        incomplete = [r for r in records if r.missing(modalities)]
        if incomplete:
            first = incomplete[0]
            raise first._missing_error(first.missing(modalities), len(incomplete))
        logger.debug(
            "listed %d samples of %s/%s (%s)",
            len(records),
            class_name,
            split,
            ", ".join(modalities),
        )
        return records

    def iter_samples(
        self,
        class_name: str,
        split: str = "test",
        defects: str | Iterable[str] | None = None,
        *,
        modalities: Sequence[str] | None = None,
    ) -> Iterator[Sample]:
        """Yield the loaded samples of :meth:`samples` one at a time.

        The records are listed (and checked for missing files) on the first
        ``next()``, and each sample's files are read only when it is yielded.
        """
        for record in self.samples(class_name, split, defects, modalities=modalities):
            yield record.load()

    def __repr__(self) -> str:
        return (
            f"MVTec3D(root={str(self.root)!r}, modalities={self.modalities!r}, "
            f"classes={self._classes!r})"
        )
