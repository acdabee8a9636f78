"""Calibrated probabilities and clinical operating points, fitted on the val split at the end of training and stored
with the model (``model.pt``, the MLflow model's metadata, the served model).

* **Temperature scaling** (Guo et al. 2017): probabilities are ``softmax(logits / T)`` with one scalar ``T > 0``
  minimising the negative log-likelihood of the val split (:func:`fit_temperature`: a bounded scalar search over
  ``log T`` in ``[log 0.05, log 20]``; the NLL is convex in ``1 / T``, so the search finds its minimum). ``T > 1``
  softens an overconfident model. Dividing every logit by the same ``T > 0`` never changes the arg-max: accuracy and
  recall are unchanged, and so is a binary model's AUC; ECE and NLL change. ``method: none`` stores ``T = 1``.
* **Operating points** (:func:`choose_operating_points`), chosen on the val split's calibrated probabilities:
  ``argmax`` (the predicted class), and per class ``<class>@sens95`` (the highest threshold on ``prob_<class>`` whose
  val sensitivity reaches ``target_sensitivity``: the most specific rule that still finds that share of the class)
  and ``<class>@youden`` (the threshold maximising Youden's J = sensitivity + specificity - 1 on val; ties: the highest
  threshold). A threshold rule flags an image as the class when ``prob_<class> >= threshold`` (one class against the
  rest), whatever the arg-max says. A threshold sits midway between the val score it keeps and the next lower val
  score (0 below the lowest), so that the last bits of another device's arithmetic do not move a val image across
  it. A class without both positive and negative val images gets no threshold.
* Nothing here reads the test split: :func:`fit_on_val` is given the val split only.
"""

from __future__ import annotations

import logging
import math
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.models.inference import predict_logits, softmax_t

log = logging.getLogger(__name__)

ARGMAX = "argmax"
T_BOUNDS = (0.05, 20.0)


class CalibrationParams(Strict):
    method: Literal["temperature", "none"] = Field(
        "temperature", description="temperature: probabilities = softmax(logits / T), T fitted on val (NLL); none: T=1")
    target_sensitivity: float = Field(0.95, gt=0, le=1, description="the <class>@sens operating points: the highest "
                                                                    "threshold reaching this val sensitivity")


# ---------------------------------------------------------------------------------------------------------------------
# temperature scaling


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float((lse - z[np.arange(len(y)), np.asarray(y, dtype=np.int64)]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The ``T`` in :data:`T_BOUNDS` minimising :func:`nll` on ``(logits, y)`` (the val split)."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise LungxrayError(f"temperature scaling needs (N, C) logits for N > 0 labels, got {z.shape} for "
                            f"{y.shape[0]} labels: check that the val split is not empty (split.ratios)")
    if not np.isfinite(z).all():
        raise LungxrayError("the model gives non-finite logits on the val split: it cannot be calibrated; lower the "
                            "learning rate and retrain (or set calibration.method: none)")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda s: nll(z, y, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


# ---------------------------------------------------------------------------------------------------------------------
# operating points


def sens_name(target: float) -> str:
    """``0.95`` -> ``"sens95"``, ``0.975`` -> ``"sens97.5"``."""
    return f"sens{round(target * 100, 4):g}"


def _rates(scores: np.ndarray, pos: np.ndarray, t: float) -> tuple[float, float]:
    flag = scores >= t
    return float(flag[pos].mean()), float((~flag[~pos]).mean())


def _margin(scores: np.ndarray, t: float) -> float:
    """Midway between the score ``t`` and the next lower score (0 when none is lower): the same flags, with room."""
    lower = scores[scores < t]
    return float((t + lower.max()) / 2) if lower.size else 0.0


def sensitivity_threshold(scores: np.ndarray, pos: np.ndarray, target: float) -> float:
    """The most specific threshold ``t`` with ``mean(scores[pos] >= t) >= target``."""
    scores = np.asarray(scores, dtype=np.float64)
    s = np.sort(scores[pos])[::-1]
    need = max(1, math.ceil(target * s.size - 1e-9))
    return _margin(scores, float(s[need - 1]))


def youden_threshold(scores: np.ndarray, pos: np.ndarray) -> float:
    """The threshold among the scores maximising sensitivity + specificity - 1 (ties: the highest)."""
    s = np.asarray(scores, dtype=np.float64)
    cand = np.unique(s)[::-1]  # descending
    n_pos, n_neg = pos.sum(), (~pos).sum()
    order = np.searchsorted(np.sort(s[pos]), cand, side="left")  # positives below each candidate
    neg_below = np.searchsorted(np.sort(s[~pos]), cand, side="left")
    j = (n_pos - order) / n_pos + neg_below / n_neg - 1.0
    return _margin(s, float(cand[int(np.argmax(j))]))


def argmax_only() -> dict[str, dict]:
    """The operating points of a model that stores no threshold (an ensemble, a checkpoint older than thresholds):
    the argmax alone; every model has it."""
    return {ARGMAX: {"rule": "argmax", "class": None, "threshold": None}}


def choose_operating_points(y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                            target_sensitivity: float) -> dict[str, dict]:
    """``{name: rule}`` chosen on ``(y, probs)`` (the val split): ``argmax``, and per class ``<class>@sens..`` and
    ``<class>@youden`` with their threshold and val sensitivity / specificity (see the module docstring)."""
    y, p = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    ops = argmax_only()
    for k, c in enumerate(classes):
        pos = y == k
        if not pos.any() or pos.all():
            log.info("no threshold for class %s: the val split holds %s of it", c, "none" if not pos.any() else "only")
            continue
        for name, rule, t in ((f"{c}@{sens_name(target_sensitivity)}", f"sensitivity >= {target_sensitivity:g}",
                               sensitivity_threshold(p[:, k], pos, target_sensitivity)),
                              (f"{c}@youden", "max Youden J", youden_threshold(p[:, k], pos))):
            sens, spec = _rates(p[:, k], pos, t)
            ops[name] = {"rule": rule, "class": c, "threshold": t, "val_sensitivity": sens, "val_specificity": spec,
                         "val_prevalence": float(pos.mean())}
    return ops


def flags(probs: np.ndarray, classes: Sequence[str], ops: dict[str, dict], name: str) -> np.ndarray:
    """Whether each row is flagged by the operating point ``name`` (for ``argmax``: the arg-max class index)."""
    op = operating_point(ops, name)
    p = np.asarray(probs, dtype=np.float64)
    if op["class"] is None:
        return p.argmax(axis=1)
    return p[:, list(classes).index(op["class"])] >= op["threshold"]


def operating_point(ops: dict[str, dict], name: str) -> dict:
    """The stored operating point ``name``, or an error listing the model's ones."""
    if name not in ops:
        raise LungxrayError(f"the model has no operating point {name!r}; it has: {', '.join(ops)}")
    return ops[name]


# ---------------------------------------------------------------------------------------------------------------------
# what model.pt stores


def fit_on_val(logits: np.ndarray, y: np.ndarray, classes: Sequence[str], params: CalibrationParams) -> dict:
    """What is stored with the model, from the val split's logits and labels only: ``temperature``, ``calibration``
    (method, T, val NLL before and after; the ECE is the evaluate stage's) and ``operating_points``. (No import of
    :mod:`lungxray.evaluate.metrics` here: the train stage and its checkpoints would then depend on the evaluation
    code.)"""
    t = fit_temperature(logits, y) if params.method == "temperature" else 1.0
    record = {"method": params.method, "temperature": t, "fitted_on": "val", "val_images": int(len(y)),
              "val_nll_before": nll(logits, y), "val_nll_after": nll(logits, y, t)}
    log.info("temperature %.3f fitted on %d val images: NLL %.4f -> %.4f", t, len(y), record["val_nll_before"],
             record["val_nll_after"])
    return {"temperature": t, "calibration": record,
            "operating_points": choose_operating_points(y, softmax_t(logits, t), classes, params.target_sensitivity)}


def calibrate_model(model, x_val: np.ndarray, y_val: np.ndarray, mean, std, classes: Sequence[str],
                    params: CalibrationParams | None, device, batch_size: int = 64) -> dict:
    """:func:`fit_on_val` on the val images' logits by ``model`` (the train stage's last step, on the kept weights)."""
    logits = predict_logits(model, x_val, mean, std, batch_size=batch_size, device=device)
    return fit_on_val(logits, y_val, classes, params or CalibrationParams())
