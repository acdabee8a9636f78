"""Builders shared by several test modules (and the dedupe benchmarks): import them from here, never from a test
module. ``tests`` is on the path (pyproject ``pythonpath``), so ``from helpers.images import xray``."""
