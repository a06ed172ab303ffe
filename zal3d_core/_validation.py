"""Input checks shared by the public functions.

Each check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong shape or
value. Messages name the argument, the expectation, the value received and, where it
helps, the fix.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

# Largest coordinate magnitude that geometry kernels accept. Squared distances between
# points this far apart, summed over any practical number of dimensions, stay far below
# the float64 maximum (about 1.8e308), so no distance or covariance overflows to inf.
MAX_COORDINATE = 1e100

# Integers handed to Numba kernels must fit in int64, and a float stands for an int
# only while it is exact (below 2**53).
_INT64_MAX = 2**63 - 1
_EXACT_FLOAT_INT = 2**53


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def as_float_array(value: Any, name: str) -> np.ndarray:
    """Convert ``value`` to a floating-point ndarray without changing float64 to float32."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a numeric array, but got {_describe(value)}.")
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and odd objects
        raise TypeError(f"{name} must be a numeric array: {error}") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
        or array.dtype == np.bool_
    ):
        raise TypeError(
            f"{name} must be a numeric array, but got dtype {array.dtype}. "
            "Convert it with np.asarray(..., dtype=np.float32)."
        )
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    elif array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    return array


def largest_magnitude(array: np.ndarray) -> float:
    """Return the largest absolute value in ``array``, ignoring NaN (0 when none)."""
    high = np.fmax.reduce(array, axis=None, initial=-np.inf)
    low = np.fmin.reduce(array, axis=None, initial=np.inf)
    if high < low:  # empty, or every value is NaN
        return 0.0
    return float(max(abs(high), abs(low)))


def check_magnitude(
    array: np.ndarray, name: str, limit: float = MAX_COORDINATE
) -> float:
    """Raise ValueError if a value of ``array`` exceeds ``limit`` in magnitude, and
    return the largest magnitude otherwise."""
    largest = largest_magnitude(array)
    if largest > limit:
        raise ValueError(
            f"{name} contains values up to {largest:.3g} in magnitude, but at most "
            f"{limit:.0e} is supported, because distances between larger values "
            "overflow. Rescale them."
        )
    return largest


def check_points(
    points: Any,
    name: str = "points",
    *,
    dim: int | None = 3,
    min_points: int = 1,
    allow_nan: bool = False,
) -> np.ndarray:
    """Check an ``(N, dim)`` point array and return it as float32 or float64.

    With ``allow_nan`` rows that contain NaN are allowed (they are missing points).
    Infinite values are always rejected.
    """
    array = as_float_array(points, name)
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
        expected = f"(N, {dim})" if dim is not None else "(N, D)"
        hint = ""
        if dim == 3 and array.ndim == 3 and array.shape[-1] == 3:
            hint = " For an organized (H, W, 3) cloud, pass xyz.reshape(-1, 3)."
        elif dim == 3 and array.ndim == 2 and array.shape[1] > 3:
            hint = " Pass only the x, y and z columns."
        raise ValueError(
            f"{name} must have shape {expected}, but got {array.shape}.{hint}"
        )
    if np.isinf(array).any():
        bad = int(np.isinf(array).any(axis=1).sum())
        raise ValueError(
            f"{name} contains infinite values in {bad} rows. Replace them with NaN "
            "to mark missing points, or drop those rows."
        )
    if not allow_nan and np.isnan(array).any():
        bad = int(np.isnan(array).any(axis=1).sum())
        raise ValueError(
            f"{name} contains NaN in {bad} of {array.shape[0]} rows. Drop the missing "
            "points first, e.g. points[~np.isnan(points).any(axis=1)]."
        )
    check_magnitude(array, name)
    valid = array.shape[0] if not allow_nan else int((~np.isnan(array).any(axis=1)).sum())
    if valid < min_points:
        raise ValueError(
            f"{name} must contain at least {min_points} valid points, but got {valid}."
        )
    return array


def check_organized(xyz: Any, name: str = "xyz", *, min_valid: int = 0) -> np.ndarray:
    """Check an organized ``(H, W, 3)`` cloud with NaN for missing points."""
    array = as_float_array(xyz, name)
    if array.ndim != 3 or array.shape[2] != 3:
        hint = ""
        if array.ndim == 2 and array.shape[1] == 3:
            hint = " This looks like an unorganized (N, 3) cloud; reshape it to (H, W, 3)."
        raise ValueError(f"{name} must have shape (H, W, 3), but got {array.shape}.{hint}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must have H >= 1 and W >= 1, but got {array.shape}.")
    if np.isinf(array).any():
        raise ValueError(
            f"{name} contains infinite values. Mark missing points with NaN instead."
        )
    check_magnitude(array, name)
    if min_valid:
        valid = int((~np.isnan(array).any(axis=2)).sum())
        if valid < min_valid:
            raise ValueError(
                f"{name} must contain at least {min_valid} valid (non-NaN) points, "
                f"but got {valid}."
            )
    return array


def check_features(
    features: Any, name: str = "features", *, min_rows: int = 1, dim: int | None = None
) -> np.ndarray:
    """Check a finite ``(N, D)`` feature array and return it as C-contiguous float32."""
    array = as_float_array(features, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), but got {array.shape}.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} columns, but got shape {array.shape}."
        )
    if array.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, but got {array.shape}.")
    if array.shape[0] < min_rows:
        raise ValueError(
            f"{name} must have at least {min_rows} rows, but got {array.shape[0]}."
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad} rows. Features must be "
            "finite; drop the rows of missing patches first."
        )
    largest = largest_magnitude(array)
    if largest > float(np.finfo(np.float32).max):
        raise ValueError(
            f"{name} contains values up to {largest:.3g} in magnitude, beyond the "
            "float32 range (3.4e38) that features are stored in. Rescale them."
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Check a finite positive real number and return it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, but got {_describe(value)}.")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, but got {value!r}.")
    return value


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Check an integer in ``[minimum, maximum]`` and return it as int.

    A float is accepted when it is an exact integer below 2**53. Values outside the
    int64 range are rejected even without ``maximum``, because kernels take int64.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if (
            isinstance(value, float)
            and value.is_integer()
            and abs(value) <= _EXACT_FLOAT_INT
        ):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, but got {_describe(value)}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {_short_int(value)}.")
    if value < -_INT64_MAX - 1:
        raise ValueError(
            f"{name} must be >= {-_INT64_MAX - 1}, but got {_short_int(value)}."
        )
    if maximum is None or maximum > _INT64_MAX:
        maximum = _INT64_MAX
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, but got {_short_int(value)}.")
    return value


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{value:.3e}"


def check_seed(seed: Any, name: str = "seed") -> int:
    """Turn an int or a ``np.random.Generator`` into a non-negative 63-bit int seed."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if seed is None:
        return 0
    return check_int(seed, name, minimum=0, maximum=2**63 - 1)


def check_rng(seed: Any, name: str = "seed") -> np.random.Generator:
    """Turn an int, None or a ``np.random.Generator`` into a ``np.random.Generator``."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_seed(seed, name))


def check_viewpoint(viewpoint: Any, name: str = "viewpoint") -> np.ndarray:
    """Check a finite 3-vector and return it as float64."""
    array = as_float_array(viewpoint, name).astype(np.float64)
    if array.shape != (3,):
        raise ValueError(f"{name} must have shape (3,), but got {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, but got {array.tolist()}.")
    return array


def center_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(points - center, center)`` in float64, with the centre of the finite rows.

    Subtracting the centre in float64 before any float32 arithmetic keeps the precision
    of clouds far from the origin (UTM coordinates, scans in millimetres at 1 m range).
    The centre is the midpoint of the bounding box, so it is exact for symmetric grids.
    """
    array = np.asarray(points, dtype=np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.any():
        return array.copy(), np.zeros(array.shape[1])
    lo = array[finite].min(axis=0)
    hi = array[finite].max(axis=0)
    center = 0.5 * (lo + hi)
    return array - center, center
