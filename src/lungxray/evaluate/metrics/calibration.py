"""Calibration: the top-label reliability diagram and the expected / maximum calibration errors.

* Expected calibration error: top-label confidence (max probability) in ``ece_bins`` equal-width bins
  ``[i/n, (i+1)/n)`` (the last closed), ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungxray.evaluate.metrics.primitives import json_float, safe_div


def reliability_data(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Top-label reliability diagram data and the expected / maximum calibration errors."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    n = y.size
    conf = p.max(axis=1) if n else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if n else np.zeros(0)
    b = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(b, minlength=bins)
    sum_conf = np.bincount(b, weights=conf, minlength=bins)
    sum_acc = np.bincount(b, weights=correct, minlength=bins)
    rows, ece, mce = [], 0.0, 0.0
    for i in range(bins):
        acc = safe_div(sum_acc[i], count[i])
        mc = safe_div(sum_conf[i], count[i])
        gap = None if acc is None else abs(acc - mc)
        if gap is not None:
            ece += count[i] / n * gap
            mce = max(mce, gap)
        rows.append({"lower": i / bins, "upper": (i + 1) / bins, "count": int(count[i]), "accuracy": json_float(acc),
                     "confidence": json_float(mc), "gap": json_float(gap)})
    return {"bins": rows, "n_bins": bins, "ece": json_float(ece) if n else None, "mce": json_float(mce) if n else None,
            "n_samples": int(n)}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float | None:
    return reliability_data(y_true, probs, bins)["ece"]
