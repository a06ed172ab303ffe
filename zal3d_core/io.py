"""Readers for point clouds, images and masks, and atomic writers.

Organized clouds are ``(H, W, 3)`` float32 arrays with NaN in all three coordinates
where no point was measured. Each reader turns its format's own marker of a missing
point into NaN: MVTec 3D-AD tiffs and organized ``.npy`` files mark background with an
all-zero pixel, PCL files already use NaN, and any infinite coordinate counts as
missing too.

Supported formats:

==================  =====================================  ==========================
extension           content                                needs
==================  =====================================  ==========================
``.tiff``, ``.tif`` (H, W, 3) float xyz, zero = no point   tifffile
``.pcd``            ascii, binary or binary_compressed     pypcd4 (``zal3d[io]``)
``.ply``            vertex element with x, y, z            plyfile (``zal3d[io]``)
``.npy``, ``.npz``  (H, W, 3) or (N, 3) array              NumPy, no pickle
``.png`` and more   rgb images and ground-truth masks      Pillow
==================  =====================================  ==========================

Every writer here writes to a temporary file in the target folder, flushes it to disk
with ``fsync`` and moves it over the target with :func:`os.replace`. An interrupted
write therefore leaves the previous file (if any) intact and no partial file under the
final name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._validation import check_organized, largest_magnitude

__all__ = [
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "flatten_organized",
    "read_mask",
    "read_organized",
    "read_points",
    "read_rgb",
    "write_organized_tiff",
    "write_png",
]

logger = logging.getLogger(__name__)

TIFF_EXTENSIONS = (".tiff", ".tif")
ARRAY_EXTENSIONS = (".npy", ".npz")
ORGANIZED_EXTENSIONS = (*TIFF_EXTENSIONS, ".pcd", *ARRAY_EXTENSIONS)
POINT_EXTENSIONS = (*TIFF_EXTENSIONS, ".pcd", ".ply", *ARRAY_EXTENSIONS)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", *TIFF_EXTENSIONS)

_INSTALL_HINT = 'Install the optional readers with: pip install "zal3d[io]"'

# A PCD header has about ten lines, so a file without a DATA line within this many
# bytes is not a PCD file.
_PCD_MAX_HEADER_BYTES = 65536

# (TYPE, SIZE) pairs of the PCD format and their NumPy dtypes.
_PCD_DTYPES = {
    ("F", 4): np.float32,
    ("F", 8): np.float64,
    ("U", 1): np.uint8,
    ("U", 2): np.uint16,
    ("U", 4): np.uint32,
    ("U", 8): np.uint64,
    ("I", 1): np.int8,
    ("I", 2): np.int16,
    ("I", 4): np.int32,
    ("I", 8): np.int64,
}


# ---------------------------------------------------------------------------------------
# Paths and shared helpers


def _as_path(path: Any, name: str = "path") -> Path:
    if isinstance(path, (str, os.PathLike)):
        return Path(path)
    raise TypeError(
        f"{name} must be a str or os.PathLike, but got {type(path).__name__} {path!r}."
    )


def _existing_file(path: Any) -> Path:
    path = _as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"File not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (is it a folder?).")
    return path


def _check_extension(path: Path, supported: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in supported:
        raise ValueError(
            f"Cannot read {what} from {path}: unknown extension {path.suffix!r}. "
            f"Supported extensions: {', '.join(supported)}."
        )
    return suffix


def _invalid_file(path: Path, kind: str, detail: str) -> ValueError:
    return ValueError(
        f"{path} is truncated or not a valid {kind} file ({detail}). "
        "Check that the file was copied completely."
    )


def _missing_to_nan(xyz: np.ndarray, *, zero_is_missing: bool) -> np.ndarray:
    """Return float32 ``xyz`` with NaN in all three coordinates of each missing point.

    A point is missing when any coordinate is NaN or infinite, or, with
    ``zero_is_missing``, when all three coordinates are exactly zero.
    """
    xyz = np.array(xyz, dtype=np.float32, copy=True)
    missing = ~np.isfinite(xyz).all(axis=-1)
    if zero_is_missing:
        missing |= (xyz == 0).all(axis=-1)
    xyz[missing] = np.nan
    return xyz


def _import_optional(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"Reading {purpose} needs the optional package {module!r}, which is not "
            f"installed. {_INSTALL_HINT}"
        ) from error


def _check_numeric_array(array: np.ndarray, path: Path) -> None:
    if not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(
            f"{path} contains an array of dtype {array.dtype}, but coordinates must be "
            "floating-point or integer numbers."
        )


def _unorganized_error(path: Path, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"{path} contains an unorganized cloud of shape {shape}, not an organized "
        "(H, W, 3) grid. Use read_points to read it as (N, 3) points."
    )


# ---------------------------------------------------------------------------------------
# TIFF


def _read_tiff_array(path: Path) -> np.ndarray:
    import tifffile

    try:
        array = tifffile.imread(path)
    except (ValueError, struct.error, OSError, EOFError, IndexError, KeyError) as error:
        raise _invalid_file(path, "TIFF", f"{type(error).__name__}: {error}") from None
    if (
        array.ndim != 3
        or array.shape[2] != 3
        or array.shape[0] < 1
        or array.shape[1] < 1
    ):
        raise ValueError(
            f"{path} contains an image of shape {array.shape}, but an xyz tiff must have "
            "shape (H, W, 3) with the x, y and z channels last."
        )
    _check_numeric_array(array, path)
    return array


def _read_tiff_organized(path: Path) -> np.ndarray:
    return _missing_to_nan(_read_tiff_array(path), zero_is_missing=True)


# ---------------------------------------------------------------------------------------
# PCD


class _PcdHeader:
    """Fields of a PCD header, parsed without the restrictions of pypcd4."""

    def __init__(self, path: Path, lines: list[str]):
        values: dict[str, list[str]] = {}
        for line in lines:
            parts = line.split()
            if parts:
                values[parts[0].upper()] = parts[1:]
        self.path = path
        for key in ("FIELDS", "SIZE", "TYPE", "WIDTH", "DATA"):
            if not values.get(key):
                raise _invalid_file(path, "PCD", f"the header has no {key} line")

        self.version = " ".join(values.get("VERSION", []))
        # A field named "_" is padding. Each one gets its own name, so the record
        # dtype stays valid when there are several.
        self.fields = [
            f"_padding{i}" if field == "_" else field
            for i, field in enumerate(values["FIELDS"])
        ]
        self.types = [t.upper() for t in values["TYPE"]]
        self.data = values["DATA"][0].lower()
        self._parse_numbers(values)
        self._check_layout()
        for axis in "xyz":
            if axis not in self.fields:
                raise ValueError(
                    f"{path} has no {axis!r} field, so it contains no point coordinates. "
                    f"Fields found: {' '.join(values['FIELDS'])}."
                )
            if self.counts[self.fields.index(axis)] != 1:
                raise _invalid_file(
                    path, "PCD", f"field {axis!r} has COUNT other than 1"
                )

    def _parse_numbers(self, values: dict[str, list[str]]) -> None:
        try:
            self.sizes = [int(v) for v in values["SIZE"]]
            counts = values.get("COUNT") or ["1"] * len(self.fields)
            self.counts = [int(v) for v in counts]
            self.width = int(values["WIDTH"][0])
            self.height = int(values.get("HEIGHT", ["1"])[0])
            points = values.get("POINTS")
            self.points = int(points[0]) if points else self.width * self.height
            viewpoint = values.get("VIEWPOINT") or ["0", "0", "0", "1", "0", "0", "0"]
            self.viewpoint = tuple(float(v) for v in viewpoint)
        except ValueError as error:
            raise _invalid_file(
                self.path, "PCD", f"bad number in the header: {error}"
            ) from None

    def _check_layout(self) -> None:
        path = self.path
        lengths = {len(self.fields), len(self.sizes), len(self.types), len(self.counts)}
        if len(lengths) != 1:
            raise _invalid_file(
                path,
                "PCD",
                f"FIELDS, SIZE, TYPE and COUNT have different lengths "
                f"({len(self.fields)}, {len(self.sizes)}, {len(self.types)}, "
                f"{len(self.counts)})",
            )
        for field, kind, size in zip(self.fields, self.types, self.sizes):
            if (kind, size) not in _PCD_DTYPES:
                raise _invalid_file(
                    path,
                    "PCD",
                    f"field {field!r} has an unknown TYPE {kind} SIZE {size}",
                )
        if min(self.counts) < 1 or self.width < 0 or self.height < 1:
            raise _invalid_file(path, "PCD", "COUNT, WIDTH or HEIGHT out of range")
        if self.points != self.width * self.height:
            raise _invalid_file(
                path,
                "PCD",
                f"POINTS {self.points} differs from WIDTH x HEIGHT = "
                f"{self.width} x {self.height}",
            )
        # pypcd4 1.5 also accepts the spelling "binaryscompressed".
        if self.data not in (
            "ascii",
            "binary",
            "binary_compressed",
            "binaryscompressed",
        ):
            raise _invalid_file(path, "PCD", f"unknown DATA encoding {self.data!r}")

    @property
    def organized(self) -> bool:
        return self.height > 1

    def column(self, field: str) -> int:
        """Return the column of ``field`` in a row of values (COUNT > 1 spans columns)."""
        index = self.fields.index(field)
        return int(sum(self.counts[:index]))

    def record_size(self) -> int:
        return int(sum(s * c for s, c in zip(self.sizes, self.counts)))


def _split_pcd(path: Path, raw: bytes) -> tuple[_PcdHeader, bytes]:
    """Split a PCD file into its parsed header and the bytes after the DATA line."""
    lines: list[str] = []
    position = 0
    while True:
        end = raw.find(b"\n", position)
        if end < 0 or end > _PCD_MAX_HEADER_BYTES:
            raise _invalid_file(path, "PCD", "no DATA line found in the header")
        try:
            line = raw[position:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise _invalid_file(path, "PCD", "the header is not ASCII text") from None
        position = end + 1
        if not line or line.startswith("#"):
            continue
        lines.append(line)
        if line.upper().startswith("DATA"):
            break
    return _PcdHeader(path, lines), raw[position:]


def _pcd_ascii_xyz(header: _PcdHeader, body: bytes) -> np.ndarray:
    # pypcd4 1.5 splits ascii rows on single spaces, so files whose columns are
    # aligned with runs of spaces fail there. Here any run of whitespace (CRLF
    # included) separates values.
    n_columns = int(sum(header.counts))
    expected = header.points * n_columns
    tokens = body.split(None, expected)[:expected]
    if len(tokens) < expected:
        raise _invalid_file(
            header.path,
            "PCD",
            f"found {len(tokens)} of the {expected} values that {header.points} "
            f"points of {n_columns} values each need",
        )
    if expected == 0:
        return np.empty((0, 3), np.float32)
    try:
        values = np.array(tokens).astype(np.float64).reshape(header.points, n_columns)
    except ValueError as error:
        raise _invalid_file(header.path, "PCD", f"non-numeric data: {error}") from None
    columns = [header.column(axis) for axis in "xyz"]
    return values[:, columns].astype(np.float32)


def _check_pcd_binary_size(header: _PcdHeader, body: bytes) -> None:
    expected = header.points * header.record_size()
    if header.data == "binary":
        if len(body) < expected:
            raise _invalid_file(
                header.path,
                "PCD",
                f"binary data has {len(body)} bytes, expected {expected}",
            )
        return
    if header.points == 0:
        return
    if len(body) < 8:
        raise _invalid_file(
            header.path, "PCD", "binary_compressed data is shorter than its size header"
        )
    compressed, uncompressed = struct.unpack("<II", body[:8])
    if uncompressed != expected:
        raise _invalid_file(
            header.path,
            "PCD",
            f"binary_compressed data unpacks to {uncompressed} bytes, but the header "
            f"describes {expected}",
        )
    if len(body) - 8 < compressed:
        raise _invalid_file(
            header.path,
            "PCD",
            f"binary_compressed data has {len(body) - 8} of {compressed} bytes",
        )


def _pcd_binary_xyz(header: _PcdHeader, body: bytes) -> np.ndarray:
    pypcd4 = _import_optional("pypcd4", "PCD files")
    _check_pcd_binary_size(header, body)
    # pypcd4 1.5 accepts only VERSION .7 / 0.7 and renames "_" fields at random, so
    # its decoder gets a normalized header built from the fields parsed above.
    metadata = pypcd4.MetaData(
        fields=tuple(header.fields),
        size=tuple(header.sizes),
        type=tuple(header.types),
        count=tuple(header.counts),
        points=header.points,
        width=header.width,
        height=header.height,
        version="0.7",
        viewpoint=header.viewpoint,
        data="binary" if header.data == "binary" else "binary_compressed",
    )
    normalized = metadata.compose_header().encode("ascii") + body
    try:
        cloud = pypcd4.PointCloud.from_fileobj(io.BytesIO(normalized))
        xyz = cloud.numpy(("x", "y", "z"))
    except (ValueError, TypeError, RuntimeError, struct.error, OSError) as error:
        raise _invalid_file(
            header.path, "PCD", f"the data could not be decoded: {error}"
        ) from None
    return np.asarray(xyz, dtype=np.float32).reshape(header.points, 3)


def _read_pcd(path: Path) -> tuple[_PcdHeader, np.ndarray]:
    """Read a PCD file into its header and an (N, 3) float32 array in file order.

    Ascii files are parsed here, and binary and binary_compressed data go to pypcd4.
    """
    raw = path.read_bytes()
    header, body = _split_pcd(path, raw)
    if header.data == "ascii":
        xyz = _pcd_ascii_xyz(header, body)
    else:
        xyz = _pcd_binary_xyz(header, body)
    logger.debug(
        "read %s: %d x %d points, %s, VERSION %s",
        path,
        header.width,
        header.height,
        header.data,
        header.version,
    )
    return header, xyz


# ---------------------------------------------------------------------------------------
# NPY / NPZ


def _object_array_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} contains an object array, which only pickle can load, and zal3d never "
        "unpickles files. Save a numeric (H, W, 3) or (N, 3) array instead, e.g. "
        "np.save(path, xyz.astype(np.float32))."
    )


def _read_array_file(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error):
            raise _object_array_error(path) from None
        raise _invalid_file(path, path.suffix[1:].upper(), str(error)) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if not keys:
                raise _invalid_file(path, "NPZ", "the archive contains no arrays")
            if "xyz" in keys:
                key = "xyz"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(
                    f"{path} contains the arrays {keys} and none is named 'xyz'. Save the "
                    "cloud under the key 'xyz', or save only one array."
                )
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                if "allow_pickle" in str(error):
                    raise _object_array_error(path) from None
                raise _invalid_file(path, "NPZ", str(error)) from None
        if not isinstance(array, np.ndarray):
            # NumPy returns the raw bytes of archive members that are not .npy files.
            raise _invalid_file(path, "NPZ", f"the member {key!r} is not a .npy array")
    else:
        array = loaded
    _check_numeric_array(array, path)
    return array


def _array_to_organized(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 3:
        raise _unorganized_error(path, array.shape)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{path} contains an array of shape {array.shape}, but an organized cloud "
            "must have shape (H, W, 3)."
        )
    return _missing_to_nan(array, zero_is_missing=True)


# ---------------------------------------------------------------------------------------
# PLY


def _read_ply(path: Path) -> np.ndarray:
    plyfile = _import_optional("plyfile", "PLY files")
    try:
        with path.open("rb") as stream:
            data = plyfile.PlyData.read(stream, mmap=False)
        vertex = data["vertex"]
        xyz = np.column_stack([np.asarray(vertex[axis]) for axis in "xyz"])
    except KeyError as error:
        raise ValueError(
            f"{path} has no vertex element with x, y and z properties ({error})."
        ) from None
    except (
        plyfile.PlyParseError,
        ValueError,
        EOFError,
        struct.error,
        IndexError,
    ) as error:
        raise _invalid_file(path, "PLY", f"{type(error).__name__}: {error}") from None
    except MemoryError:
        # plyfile allocates the element count from the header before reading data.
        raise _invalid_file(
            path, "PLY", "its header declares more vertices than fit in memory"
        ) from None
    return np.asarray(xyz, dtype=np.float32).reshape(-1, 3)


# ---------------------------------------------------------------------------------------
# Public readers


def read_organized(path: str | os.PathLike) -> np.ndarray:
    """Read an organized point cloud as an (H, W, 3) float32 array.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.tiff``/``.tif`` with an (H, W, 3) float image (MVTec 3D-AD xyz), an
        organized ``.pcd`` (HEIGHT > 1; ascii, binary or binary_compressed), or a
        ``.npy``/``.npz`` holding an (H, W, 3) array (npz: the key ``xyz`` or the only
        array).

    Returns
    -------
    xyz : ndarray of shape (H, W, 3), float32
        NaN in all three coordinates where no point was measured: all-zero pixels of
        tiff and npy files, and pixels with any NaN or infinite coordinate.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is unknown, the file is truncated or invalid, the array has
        the wrong shape, or the file contains an unorganized cloud.
    ImportError
        If a ``.pcd`` file is given and pypcd4 is not installed.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from zal3d_core.io import read_organized, write_organized_tiff
    >>> xyz = np.full((2, 2, 3), np.nan, np.float32)
    >>> xyz[0, 0] = (1.0, 2.0, 3.0)
    >>> path = os.path.join(tempfile.mkdtemp(), "000.tiff")
    >>> _ = write_organized_tiff(path, xyz)
    >>> read_organized(path)[..., 2].tolist()
    [[3.0, nan], [nan, nan]]
    """
    path = _existing_file(path)
    suffix = _check_extension(path, ORGANIZED_EXTENSIONS, "an organized cloud")
    if suffix in TIFF_EXTENSIONS:
        xyz = _read_tiff_organized(path)
    elif suffix == ".pcd":
        header, points = _read_pcd(path)
        if not header.organized:
            raise _unorganized_error(path, (header.points, 3))
        xyz = _missing_to_nan(
            points.reshape(header.height, header.width, 3), zero_is_missing=False
        )
    else:
        xyz = _array_to_organized(_read_array_file(path), path)
    return np.ascontiguousarray(xyz)


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Read the finite points of a cloud file as an (N, 3) float32 array.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.pcd`` (organized or not), a ``.ply`` (vertex x, y, z), a ``.npy``/``.npz``
        holding an (N, 3) or (H, W, 3) array, or an xyz ``.tiff``.

    Returns
    -------
    points : ndarray of shape (N, 3), float32
        The points in file order (row-major for organized data), without the missing
        ones. Rows with a NaN or infinite coordinate are always dropped. All-zero
        points are dropped only from tiffs and (H, W, 3) arrays, whose formats use
        zero as the marker of a missing point. An all-zero row of an (N, 3) array, a
        PCD or a PLY is an ordinary point at the origin.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is unknown, the file is truncated or invalid, or the array
        has the wrong shape.
    ImportError
        If pypcd4 (for ``.pcd``) or plyfile (for ``.ply``) is not installed.
    """
    path = _existing_file(path)
    suffix = _check_extension(path, POINT_EXTENSIONS, "points")
    if suffix in TIFF_EXTENSIONS:
        points = _read_tiff_organized(path).reshape(-1, 3)
    elif suffix == ".pcd":
        points = _read_pcd(path)[1]
    elif suffix == ".ply":
        points = _read_ply(path)
    else:
        array = _read_array_file(path)
        if array.ndim == 3 and array.shape[2] == 3:
            points = _missing_to_nan(array, zero_is_missing=True).reshape(-1, 3)
        elif array.ndim == 2 and array.shape[1] == 3:
            points = np.asarray(array, dtype=np.float32)
        else:
            raise ValueError(
                f"{path} contains an array of shape {array.shape}, but points must have "
                "shape (N, 3) or (H, W, 3)."
            )
    finite = np.isfinite(points).all(axis=1)
    return np.ascontiguousarray(points[finite], dtype=np.float32)


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
    ) as error:
        detail = f"{type(error).__name__}: {error}"
        if path.suffix.lower() in TIFF_EXTENSIONS:
            # Pillow cannot open float32 x, y, z tiffs such as MVTec 3D-AD's xyz files.
            detail += "; if it is an xyz tiff, read it with read_organized"
        raise _invalid_file(path, "image", detail) from None
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read a colour image as an (H, W, 3) uint8 array.

    Grey, palette and RGBA images are converted to RGB with Pillow (alpha is dropped).
    16-bit grey images are scaled to 8 bits by Pillow's conversion, which clips values
    above 255.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is unknown or the file is truncated or not an image.
    """
    path = _existing_file(path)
    _check_extension(path, IMAGE_EXTENSIONS, "an rgb image")
    image = _open_image(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as an (H, W) bool array that is True on defects.

    A pixel is a defect when its value is nonzero: MVTec 3D-AD masks store a defect id
    per pixel (for example 253, 254 or 255), not 0/255. In colour masks a pixel is a
    defect when any of the R, G and B channels is nonzero (alpha is ignored). Palette
    masks are tested on their palette index.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is unknown or the file is truncated or not an image.
    """
    path = _existing_file(path)
    _check_extension(path, IMAGE_EXTENSIONS, "a mask")
    image = _open_image(path)
    array = np.asarray(image)
    if array.ndim == 3:
        channels = 1 if image.mode in ("LA", "La") else min(array.shape[2], 3)
        array = array[:, :, :channels].any(axis=2)
    return np.ascontiguousarray(array != 0)


def flatten_organized(xyz: Any) -> tuple[np.ndarray, np.ndarray]:
    """Extract the valid points of an organized cloud and their flat pixel indices.

    Parameters
    ----------
    xyz : array-like of shape (H, W, 3)
        Organized cloud with NaN where no point was measured.

    Returns
    -------
    points : ndarray of shape (N, 3), float32
        The points without NaN, in row-major pixel order.
    flat_index : ndarray of shape (N,), intp
        ``xyz.reshape(-1, 3)[flat_index] == points``. Scatter per-point values back
        with ``out = np.full(H * W, np.nan); out[flat_index] = values``.

    Examples
    --------
    >>> import numpy as np
    >>> xyz = np.full((2, 2, 3), np.nan)
    >>> xyz[1, 0] = (1, 2, 3)
    >>> points, flat_index = flatten_organized(xyz)
    >>> points.tolist(), flat_index.tolist()
    ([[1.0, 2.0, 3.0]], [2])
    """
    xyz = check_organized(xyz, "xyz")
    flat = xyz.reshape(-1, 3)
    flat_index = np.flatnonzero(~np.isnan(flat).any(axis=1)).astype(np.intp)
    points = np.ascontiguousarray(flat[flat_index], dtype=np.float32)
    return points, flat_index


# ---------------------------------------------------------------------------------------
# Atomic writers


def make_folder(path: Any, name: str = "folder") -> Path:
    """Create the folder ``path`` and its parents, and return it as a Path.

    Raises NotADirectoryError, naming ``name``, when ``path`` or one of its parents is
    an existing file.
    """
    path = _as_path(path, name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(
            f"{name} {path} is a file, not a folder. Pass a folder path."
        ) from None
    except NotADirectoryError:
        raise NotADirectoryError(
            f"Cannot create {name} {path}: part of the path is a file, not a folder."
        ) from None
    return path


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable. Not every platform can open a folder (Windows
    # cannot), and there the rename is still atomic, only not yet flushed.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    # Linux 4.7+ reports the umask in /proc, which is safe with other threads running.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Elsewhere os.umask can only be read by setting it, so set it back at once.
    # NOTE: a file another thread creates in between gets the umask 0o022.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _new_file_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o7777
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def _atomic_open(path: Any) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` and move it over ``path`` on success.

    If the block raises, or the process stops before the rename, the temporary file is
    removed (or left under its temporary name) and ``path`` keeps its old content.
    """
    path = _as_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot write {path}: it is a folder. Pass a file name inside it."
        )
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(
                f"Cannot write {path}: {folder} is a file, not a folder."
            )
        raise FileNotFoundError(
            f"Cannot write {path}: the folder {folder} does not exist. Create it first."
        )
    mode = _new_file_mode(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=folder
    )
    # Reopen by name: some writers (tifffile) need a file object with a str name.
    os.close(descriptor)
    try:
        with open(temporary, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)
    logger.debug("wrote %s", path)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes | bytearray | memoryview
) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"data must be bytes, bytearray or memoryview, but got {type(data).__name__}. "
            "Use atomic_write_text for str."
        )
    with _atomic_open(path) as stream:
        stream.write(data)
    return _as_path(path)


def atomic_write_text(
    path: str | os.PathLike, text: str, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically, without newline translation.

    Raises
    ------
    TypeError
        If ``text`` is not a str.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"text must be a str, but got {type(text).__name__}. Use atomic_write_bytes "
            "for bytes."
        )
    try:
        data = text.encode(encoding)
    except LookupError:
        raise ValueError(
            f"encoding {encoding!r} is not a known text encoding. Use e.g. 'utf-8'."
        ) from None
    return atomic_write_bytes(path, data)


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Save arrays to an uncompressed ``.npz`` file atomically.

    The file is written under exactly ``path``: unlike :func:`numpy.savez`, no
    ``.npz`` suffix is added. Object arrays are rejected so that the file loads with
    ``allow_pickle=False``.

    Raises
    ------
    ValueError
        If no arrays are given.
    TypeError
        If an array has dtype object.
    """
    if not arrays:
        raise ValueError(
            "atomic_save_npz needs at least one array, given as name=array."
        )
    converted = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(
                f"array {name!r} has dtype object, which needs pickle to load. Convert "
                "it to a numeric or string dtype first."
            )
        converted[name] = array
    with _atomic_open(path) as stream:
        np.savez(stream, **converted)
    return _as_path(path)


def write_organized_tiff(path: str | os.PathLike, xyz: Any) -> Path:
    """Write an organized cloud as an (H, W, 3) float32 tiff atomically.

    NaN points are written as all-zero pixels, the MVTec 3D-AD marker of a missing
    point, so :func:`read_organized` gives them back as NaN. A valid point at exactly
    (0, 0, 0) cannot be stored in this format and also reads back as NaN.

    Raises
    ------
    ValueError
        If ``xyz`` does not have shape (H, W, 3), contains infinite values, or values
        beyond the float32 range (3.4e38) that the file stores.
    """
    import tifffile

    xyz = check_organized(xyz, "xyz")
    largest = largest_magnitude(xyz)
    if largest > float(np.finfo(np.float32).max):
        raise ValueError(
            f"xyz contains values up to {largest:.3g} in magnitude, beyond the float32 "
            "range (3.4e38) of the tiff. Rescale the cloud before writing it."
        )
    data = np.nan_to_num(np.asarray(xyz, dtype=np.float32), nan=0.0)
    with _atomic_open(path) as stream:
        tifffile.imwrite(stream, np.ascontiguousarray(data), photometric="rgb")
    return _as_path(path)


def write_png(path: str | os.PathLike, array: Any) -> Path:
    """Write an image or a mask as PNG atomically.

    Parameters
    ----------
    path : str or os.PathLike
    array : ndarray
        ``(H, W)`` bool (written as 0/255 grey), ``(H, W)`` uint8 or uint16 grey,
        ``(H, W, 3)`` uint8 RGB or ``(H, W, 4)`` uint8 RGBA.

    Raises
    ------
    TypeError
        If the dtype is not bool, uint8 or uint16 (uint16 only for 2-D arrays).
    ValueError
        If the shape is not one of those listed.
    """
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 2 and array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    valid_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not valid_shape or 0 in array.shape:
        raise ValueError(
            f"array must have shape (H, W), (H, W, 3) or (H, W, 4), but got {array.shape}."
        )
    allowed = (np.uint8, np.uint16) if array.ndim == 2 else (np.uint8,)
    if array.dtype not in allowed:
        names = " or ".join(np.dtype(t).name for t in allowed)
        raise TypeError(
            f"array of shape {array.shape} must have dtype bool, {names}, but got "
            f"{array.dtype}. Convert it first, e.g. np.clip(a, 0, 255).astype(np.uint8)."
        )
    image = Image.fromarray(np.ascontiguousarray(array))
    with _atomic_open(path) as stream:
        image.save(stream, format="PNG")
    return _as_path(path)
