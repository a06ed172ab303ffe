"""Device choice, seeded random state and tensor input checks shared by zal3d_torch."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device"]


def _available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
        names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a device argument into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    device : str or torch.device, optional
        ``None`` picks ``cuda`` when a CUDA device is available and ``cpu`` otherwise.
        Strings follow torch's syntax: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    TypeError
        If ``device`` is neither None, a string nor a ``torch.device``.
    ValueError
        If the string is not a valid torch device name, or names a CUDA or MPS device
        that this machine does not have. The message lists the available devices.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be None, a string such as 'cpu' or 'cuda:0', or a "
            f"torch.device, but got {type(device).__name__} {device!r}."
        )
    available = ", ".join(_available_devices())
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a valid torch device name. Available devices: "
            f"{available}."
        ) from None

    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requests CUDA, but no CUDA device is available "
                f"(torch {torch.__version__}). Available devices: {available}. "
                "Pass device=None to use the CPU."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA devices. Available devices: "
                f"{available}."
            )
        return resolved
    if resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device {device!r} requests MPS, but MPS is not available. Available "
                f"devices: {available}."
            )
        return resolved
    raise ValueError(
        f"device {device!r} has type {resolved.type!r}, which zal3d_torch does not "
        f"support. Available devices: {available}."
    )


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global generators for a block, then restore their previous state.

    ``None`` leaves the global state alone, so the block draws from it as usual. The
    CUDA generator of ``device`` is saved and restored too when ``device`` is a CUDA
    device, because dropout on that device draws from it.
    """
    if seed is None:
        yield
        return
    devices = []
    if device is not None and device.type == "cuda":
        index = (
            device.index if device.index is not None else torch.cuda.current_device()
        )
        devices = [index]
    # torch.manual_seed would also reseed every CUDA generator without restoring it,
    # so only the generators that fork_rng saves are seeded here.
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """Check a seed: None, or an int in ``[0, 2**63 - 1]``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"{name} must be an int or None, but got {type(seed).__name__}."
        )
    seed = int(seed)
    if not 0 <= seed <= 2**63 - 1:
        raise ValueError(f"{name} must be in [0, 2**63 - 1], but got {seed}.")
    return seed


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking that it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int, but got {type(value).__name__} {value!r}."
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1, but got {value}.")
    return int(value)


def check_real(value: Any, name: str, *, allow_zero: bool) -> float:
    """Return ``value`` as a float after checking that it is finite and > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, but got {type(value).__name__}."
        )
    value = float(value)
    in_range = value >= 0 if allow_zero else value > 0
    if not (in_range and np.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, but got {value!r}.")
    return value


def _numeric_tensor(value: Any, *, dtype_error: str, type_error: str) -> torch.Tensor:
    """Convert a tensor, array, list or tuple of numbers or bools to a detached tensor.

    ``dtype_error`` and ``type_error`` are the TypeError messages for an array of
    another dtype (formatted with ``{dtype}``) and for a value of another type.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (np.ndarray, list, tuple)):
        array = np.asarray(value)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise TypeError(dtype_error.format(dtype=array.dtype))
        return torch.as_tensor(array)
    raise TypeError(type_error)


def check_float_tensor(
    value: Any, name: str, *, ndim: int, last: int | None = None, shape_text: str = ""
) -> torch.Tensor:
    """Check a finite floating-point tensor with ``ndim`` dimensions.

    Only ``torch.Tensor`` is accepted, because a silent NumPy conversion would hide a
    copy to the CPU. ``last`` fixes the size of the last dimension. ``shape_text`` is
    the expected shape written out for the message, such as ``"(B, N, 3)"``.
    """
    expected = shape_text or f"a {ndim}-D shape"
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {expected}, but got "
            f"{type(value).__name__}. Convert arrays with torch.as_tensor(...)."
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, but got dtype {value.dtype}. "
            "Convert it with .float()."
        )
    if value.ndim != ndim or (last is not None and value.shape[-1] != last):
        raise ValueError(
            f"{name} must have shape {expected}, but got {tuple(value.shape)}."
        )
    if value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values. Drop or replace the "
            "missing points before this call."
        )
    return value


def as_feature_tensor(
    value: Any, name: str, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Convert a finite ``(N, D)`` array or tensor to ``dtype`` on ``device``."""
    tensor = _numeric_tensor(
        value,
        dtype_error=f"{name} must contain numbers, but got an array of dtype {{dtype}}.",
        type_error=f"{name} must be a torch.Tensor or a NumPy array of shape (N, D), but "
                   f"got {type(value).__name__}.",
    )
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, but got dtype {tensor.dtype}.")
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, D), but got {tuple(tensor.shape)}. Pass one "
            "row per patch."
        )
    tensor = tensor.to(device=device, dtype=dtype)
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad} of {tensor.shape[0]} "
            "rows. Features must be finite; drop the rows of missing patches first."
        )
    return tensor


def check_labels(value: Any, n_rows: int, *, device: torch.device) -> torch.Tensor:
    """Check ``(N,)`` labels of 0 (normal) and 1 (pseudo anomaly); return them as bool.

    Bool, integer and floating-point labels are accepted when every value is 0 or 1.
    """
    tensor = _numeric_tensor(
        value,
        dtype_error="labels must contain 0 and 1, but got an array of dtype {dtype}.",
        type_error=f"labels must be a torch.Tensor or a NumPy array of shape (N,), but "
                   f"got {type(value).__name__}.",
    )
    if tensor.shape != (n_rows,):
        raise ValueError(
            f"labels must have shape ({n_rows},), one label per row of the features, "
            f"but got {tuple(tensor.shape)}."
        )
    tensor = tensor.to(device)
    if tensor.dtype != torch.bool:
        valid = (tensor == 0) | (tensor == 1)
        if not bool(valid.all()):
            bad = tensor[~valid][:5].tolist()
            raise ValueError(
                "labels must be 0 (normal) or 1 (pseudo anomaly), but got other values "
                f"such as {bad}."
            )
        tensor = tensor == 1
    return tensor
