"""Skip the torch tests when torch is not installed, and ``cuda`` tests without CUDA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device, and torch.cuda.is_available() is False")
