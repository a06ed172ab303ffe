"""Numba options shared by every kernel, and thread-count control for the wrappers.

All kernels are compiled lazily (on first call) and cached on disk, so
``import zal3d_core`` compiles nothing and a second process reuses the cache.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Iterator

import numba

# Fast-math flags without ``nnan`` and ``ninf``: clouds carry NaN for missing points
# and kernels test for it, which full fastmath would let LLVM remove.
FASTMATH_FLAGS = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

# Strict IEEE arithmetic for kernels whose results must not depend on how LLVM
# reorders a reduction (coreset selection, nearest-neighbour scoring), so the same
# input gives bit-identical output for any thread count.
STRICT_FLAGS = False


def jit(*args, parallel: bool = False, strict: bool = False, **kwargs):
    """Return ``numba.njit`` with the project's options.

    Parameters
    ----------
    parallel : bool, default False
        Compile with ``parallel=True``; use only where the kernel has a ``prange``.
    strict : bool, default False
        Compile without fast-math, for results that must be reproducible bit for bit.
    """
    options = {
        "cache": True,
        "nogil": True,
        "fastmath": STRICT_FLAGS if strict else set(FASTMATH_FLAGS),
        "parallel": parallel,
        "error_model": "numpy",
    }
    options.update(kwargs)
    if args and callable(args[0]):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Turn an ``n_jobs`` argument into a thread count in ``[1, numba.config.NUMBA_NUM_THREADS]``.

    ``None`` means the current Numba thread count; negative values count back from the
    number of available threads (``-1`` is all of them), as in scikit-learn.
    """
    available = numba.config.NUMBA_NUM_THREADS
    if n_jobs is None:
        return numba.get_num_threads()
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral):
        raise TypeError(f"n_jobs must be an int or None, but got {n_jobs!r}.")
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs must be a nonzero int or None, but got 0.")
    if n_jobs < 0:
        n_jobs = available + 1 + n_jobs
    return max(1, min(n_jobs, available))


@contextlib.contextmanager
def num_threads(n_jobs: int | None) -> Iterator[int]:
    """Set the Numba thread count for the duration of a call, then restore it."""
    previous = numba.get_num_threads()
    threads = resolve_n_jobs(n_jobs)
    numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(previous)


def cpu_count() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
