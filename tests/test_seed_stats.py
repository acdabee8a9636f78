"""benchmarks/seed_stats.py: how the benchmark tables print a figure measured over several seeds."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("seed_stats", Path(__file__).parents[1] / "benchmarks" / "seed_stats.py")
seed_stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_stats)


def test_several_seeds_print_the_mean_and_the_sample_sd():
    assert seed_stats.mean_sd([0.99, 0.97, 0.98]) == "0.9800 ± 0.0100"


def test_one_seed_prints_its_value_alone_at_the_asked_precision():
    assert seed_stats.mean_sd([0.98765], digits=3) == "0.988"


@pytest.mark.parametrize("values", [[], [None], [float("nan"), None]])
def test_no_figure_prints_an_empty_cell(values):
    assert seed_stats.mean_sd(values) == ""


def test_seeds_without_a_figure_are_left_out_of_the_mean():
    assert seed_stats.mean_sd([0.5, None, float("nan"), 0.7], digits=2) == "0.60 ± 0.14"
