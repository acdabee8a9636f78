"""Builders shared by several test modules: import them from here (or take a ``conftest.py`` fixture), never from a
test module or from ``benchmarks/`` (and benchmarks never import these). ``tests`` is on the path (pyproject ``pythonpath``), so ``from helpers.images import xray``."""
