"""The building blocks of every metric: input checks, the confusion matrix, the one-vs-rest ROC-AUC and JSON-able
floats.

* A ratio whose denominator is 0 is ``None`` (:func:`safe_div`), and so is a NaN or infinite value in the JSON outputs
  (:func:`json_float`), never a silent 0.
* ROC-AUC is the Mann-Whitney statistic: ties in scores count 1/2, as ``sklearn.metrics.roc_auc_score``;
  :func:`grouped_auc` computes it for many weightings of the same samples at once (the bootstrap's resamples).
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# helpers


def json_float(x) -> float | None:
    """A JSON-able float (None for None / NaN / inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def safe_div(a: float, b: float) -> float | None:
    return None if b == 0 else float(a) / float(b)


def check_inputs(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} rows of probabilities")
    if p.shape[1] != len(classes):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(classes)} classes are named")
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)}), got {y.min()}..{y.max()}")
    return y, p


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                                   num_classes)


def grouped_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC for each row of ``weights`` (B, N) (sample multiplicities); ties count 1/2.

    NaN where the (weighted) positives or negatives are empty.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    pos = positive[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, dtype=np.int64)
    wp = np.add.reduceat(w * pos, starts, axis=1) if s.size else np.zeros((w.shape[0], 0))
    wn = np.add.reduceat(w * ~pos, starts, axis=1) if s.size else np.zeros((w.shape[0], 0))
    below = np.cumsum(wn, axis=1) - wn  # negatives with a strictly lower score
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def ovr_auc(y_true: np.ndarray, probs: np.ndarray, k: int) -> tuple[float | None, str | None]:
    """One-vs-rest ROC-AUC of class ``k`` and, when undefined, why."""
    y = np.asarray(y_true)
    pos = y == k
    if not pos.any():
        return None, "class absent from y_true"
    if pos.all():
        return None, "only this class present in y_true"
    auc = grouped_auc(np.asarray(probs, dtype=np.float64)[:, k], pos, np.ones((1, y.size)))[0]
    return float(auc), None
