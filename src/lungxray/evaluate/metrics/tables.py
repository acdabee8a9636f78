"""The tables of one evaluation: per-image predictions (what a paired comparison of two models needs), and the DVC
plot data (ROC points, confusion pairs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from lungxray.evaluate.metrics.primitives import check_inputs

# ---------------------------------------------------------------------------------------------------------------------
# per-image predictions (what a paired comparison of two models needs)

PROB_PREFIX = "prob_"


def predictions_table(ids: Sequence[str], units: Sequence[str], y_true: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str]) -> pd.DataFrame:
    """One row per image: ``id``, ``unit``, ``label`` (class name), then ``prob_<class>`` for every class."""
    classes = list(classes)
    y, p = check_inputs(y_true, probs, classes)
    df = pd.DataFrame({"id": list(ids), "unit": list(units), "label": np.asarray(classes, dtype=object)[y]})
    if len(df) != y.shape[0]:
        raise ValueError(f"{len(df)} ids for {y.shape[0]} samples")
    for k, c in enumerate(classes):
        df[f"{PROB_PREFIX}{c}"] = p[:, k]
    return df


def predictions_arrays(df: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y, probs) of a :func:`predictions_table` frame: label indices in ``classes`` and the (N, C) probabilities in
    that class order."""
    y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    return y, df[[f"{PROB_PREFIX}{c}" for c in classes]].to_numpy(np.float64)


def _classes_of(df: pd.DataFrame) -> list[str]:
    return [c[len(PROB_PREFIX):] for c in df.columns if c.startswith(PROB_PREFIX)]


def align_predictions(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, probs_a, probs_b, units) of two :func:`predictions_table` frames over the same images, in ``a``'s order.

    Raises ValueError, saying why, when they do not cover the same images with the same labels and classes.
    """
    ca, cb = _classes_of(a), _classes_of(b)
    if sorted(ca) != sorted(cb):
        raise ValueError(f"the predictions are over different classes ({ca} and {cb})")
    if len(a) != len(b) or set(a["id"]) != set(b["id"]) or a["id"].duplicated().any():
        raise ValueError(f"the predictions are over different images ({len(a)} and {len(b)} rows)")
    b = b.set_index("id").loc[a["id"]]
    if (b["label"].to_numpy() != a["label"].to_numpy()).any():
        raise ValueError("the predictions give some images different labels")
    bad = sorted(set(a["label"]) - set(ca))
    if bad:
        raise ValueError(f"labels {bad} have no probability column")
    y, probs_a = predictions_arrays(a, ca)
    return y, probs_a, predictions_arrays(b, ca)[1], a["unit"].astype(str).to_numpy()


# ---------------------------------------------------------------------------------------------------------------------
# DVC plot data


def roc_points(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest ROC curve points: columns class, fpr, tpr, threshold (classes with an undefined curve skipped).

    Infinite thresholds (sklearn's first point) are written as the float max so the CSV/JSON stays finite.
    """
    from sklearn.metrics import roc_curve

    y, p = check_inputs(y_true, probs, classes)
    frames = []
    for k, name in enumerate(classes):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        fpr, tpr, thr = roc_curve(pos.astype(int), p[:, k], drop_intermediate=True)
        thr = np.where(np.isfinite(thr), thr, np.finfo(np.float64).max)
        frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    if not frames:
        return pd.DataFrame({"class": pd.Series(dtype=str), "fpr": pd.Series(dtype=float),
                             "tpr": pd.Series(dtype=float), "threshold": pd.Series(dtype=float)})
    return pd.concat(frames, ignore_index=True)


def confusion_pairs(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One row per sample, columns actual, predicted (class names): the input of DVC's confusion templates."""
    names = np.asarray(list(classes), dtype=object)
    y = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    if y.shape != yp.shape:
        raise ValueError(f"y_true {y.shape} and y_pred {yp.shape} differ in shape")
    return pd.DataFrame({"actual": names[y].astype(str), "predicted": names[yp].astype(str)})
