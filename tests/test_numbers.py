"""One rule for numbers read from reports (issue 21: gate._num and promote._num had drifted; three interval
formatters spelt a missing value "n/a", "-" and otherwise)."""

from __future__ import annotations

import math

from lungxray.compare.promote import PromotionParams, rank
from lungxray.core.numbers import MISSING, finite, fmt, fmt_interval


def test_finite_takes_numbers_only():
    assert finite(0.5) == 0.5 and finite("0.25") == 0.25 and finite(3) == 3.0
    for bad in (None, True, False, "x", math.nan, math.inf, [1]):
        assert finite(bad) is None, bad


def test_a_bool_is_not_a_selection_metric():
    """``true`` in a metrics file is no score: the promotion rule ranks it with the missing ones, as the gate does."""
    p = PromotionParams(metric="val_macro_recall")
    ranked = rank([{"model": "a", "val_macro_recall": True}, {"model": "b", "val_macro_recall": 0.5}], p)
    assert [c["model"] for c in ranked] == ["b", "a"]


def test_a_missing_value_is_spelt_the_same_in_every_report():
    assert fmt(None) == fmt(math.nan) == MISSING == "-"
    assert fmt_interval(0.91234, 0.88, 0.94) == "0.912 [0.880, 0.940]"
    assert fmt_interval(0.9, None, 0.94) == "0.900" and fmt_interval(None, 0.1, 0.2) == MISSING
    assert fmt_interval(0.5, 0.4, 0.6, 4) == "0.5000 [0.4000, 0.6000]"
