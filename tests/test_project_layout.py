"""Project configuration that the commands in README.md rely on."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_modules_are_collected():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    patterns = config["ini_options"]["python_files"]
    assert "benchmarks" in config["ini_options"]["testpaths"]
    modules = sorted((ROOT / "benchmarks").glob("*.py"))
    assert modules
    for module in modules:
        matched = [p for p in patterns if fnmatch.fnmatch(module.name, p)]
        assert matched, f"{module.name} matches none of python_files {patterns}"
