"""Optional tqdm progress bars over iterables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def iterate_with_progress(iterable: Iterable[Any], total: int | None = None, desc: str | None = None,
             enabled: bool = False) -> Iterable[Any]:
    """Wrap ``iterable`` in a tqdm bar when ``enabled`` and tqdm is installed.

    Otherwise ``iterable`` is returned unchanged, so callers need no tqdm check.
    """
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)
