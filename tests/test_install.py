"""The package declares the Python versions it supports (3.11-3.13; an install on 3.12 and 3.13 was checked by hand)."""

import tomllib

from packaging.specifiers import SpecifierSet

from conftest import REPO


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_requires_python_admits_3_11_to_3_13_and_nothing_older():
    spec = SpecifierSet(_project()["requires-python"])
    for ok in ("3.11.7", "3.12.1", "3.13.0"):
        assert spec.contains(ok), ok
    assert not spec.contains("3.10.13")


def test_torch_and_torchvision_are_pinned_to_the_pair_on_this_disk():
    deps = _project()["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
