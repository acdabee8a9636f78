"""The no-skill line: what a classifier scores on the same images without looking at them, beside every figure.

* **Constant classifiers.** Answering class ``c`` for every image scores accuracy = the prevalence of ``c`` (its share
  of the images), recall 1 on ``c`` and 0 on every other class, so macro recall ``1/k`` (``k``: the classes present,
  the macro convention of :mod:`.classification`), and, every score tied, ROC-AUC 0.5 (ties count 1/2; ``None`` with
  fewer than two classes present). The best of them answers the **majority class** (ties: the lowest class index, as
  ``np.argmax``); its accuracy, the **majority share**, is the floor an accuracy has to clear.
* **Lift** = accuracy minus the majority share. Its interval is a percentile interval over **the same resamples as
  the accuracy interval** (:func:`.bootstrap.resample_weights` with the evaluate seed: the same split units drawn):
  in each resample, the model's accuracy minus the share of the majority class (fixed on all images) among that
  resample's images, i.e. the paired difference of the model and the constant classifier.
* **Flag** ``no_better_than_majority``: the accuracy interval contains the majority share (without an interval,
  bootstrap 0: the accuracy does not exceed it). :func:`no_skill_note` words it: "no better than always answering
  <class>".
* **Published figures** (:func:`constant_classifier_match`): a reported accuracy that equals, at the precision it is
  reported with, the share of one class on a test set of known class counts is what a constant classifier scores.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from lungxray.evaluate.metrics.bootstrap import percentile_interval, resample_weights
from lungxray.evaluate.metrics.primitives import check_inputs, json_float

LIFT_KEYS = ("lift_over_majority", "lift_ci_low", "lift_ci_high", "no_better_than_majority")


def constant_classifiers(y_true: np.ndarray, classes: Sequence[str]) -> dict[str, Any] | None:
    """The figures of the constant classifiers on labels ``y_true``: ``majority_class``, ``majority_share`` (its
    accuracy), ``prevalence`` ({class: share}), ``macro_recall`` (1/k), ``macro_auc`` (0.5), ``n_samples``; None
    without images."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if y.size == 0:
        return None
    counts = np.bincount(y, minlength=len(classes))
    major = int(counts.argmax())
    present = int((counts > 0).sum())
    return {"majority_class": classes[major], "majority_share": json_float(counts[major] / y.size),
            "prevalence": {c: json_float(counts[k] / y.size) for k, c in enumerate(classes)},
            "macro_recall": json_float(1.0 / present), "macro_auc": 0.5 if present > 1 else None,
            "n_samples": int(y.size)}


def lift_interval(y: np.ndarray, probs: np.ndarray, majority: int, resamples: int, ci: float, seed: int,
                  units: Sequence | None) -> dict[str, float | None]:
    """Percentile interval of accuracy minus the majority class's share, over the accuracy interval's resamples."""
    if resamples <= 0 or y.size == 0:
        return {"low": None, "high": None}
    gain = (probs.argmax(axis=1) == y).astype(np.float64) - (y == majority).astype(np.float64)
    lifts = []
    for w in resample_weights(units, y.size, resamples, seed):
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            lifts.append(np.where(total > 0, (w @ gain) / np.where(total > 0, total, 1), np.nan))
    return percentile_interval(np.concatenate(lifts), ci)


def no_skill(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], params=None,
             units: Sequence | None = None, accuracy_ci: tuple | None = None) -> dict[str, Any]:
    """``no_skill`` (:func:`constant_classifiers`) and the model's lift with its interval and flag (:data:`LIFT_KEYS`)
    on one split; ``params``: the evaluate settings (bootstrap, ci, seed; an ``EvaluateParams``), ``accuracy_ci``:
    the model's accuracy interval (low, high) that the flag reads."""
    classes = list(classes)
    y, p = check_inputs(y_true, probs, classes)
    base = constant_classifiers(y, classes)
    if base is None:
        return {"no_skill": None, **{k: None for k in LIFT_KEYS}}
    accuracy = float((p.argmax(axis=1) == y).mean())
    share = base["majority_share"]
    resamples, ci, seed = (params.bootstrap, params.ci, params.seed) if params is not None else (0, 0.95, 0)
    lift = lift_interval(y, p, classes.index(base["majority_class"]), resamples, ci, seed, units)
    lo, hi = accuracy_ci or (None, None)
    flag = bool(lo <= share <= hi) if lo is not None and hi is not None else bool(accuracy <= share)
    return {"no_skill": base, "lift_over_majority": json_float(accuracy - share), "lift_ci_low": lift["low"],
            "lift_ci_high": lift["high"], "no_better_than_majority": flag}


def with_no_skill(figures: dict[str, Any], y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  params=None, units: Sequence | None = None) -> dict[str, Any]:
    """One split's figures (:func:`.classification.compute_metrics`) with the no-skill line added (existing keys
    kept)."""
    ci = (figures.get("accuracy_ci_low"), figures.get("accuracy_ci_high"))
    return {**figures, **no_skill(y_true, probs, classes, params, units, ci)}


def no_skill_note(figures: Mapping[str, Any] | None, digits: int = 1) -> str:
    """The no-skill line of one split's figures in words: ``no-skill: always pneumonia 62.5%, lift +31.2 points
    [28.0, 34.3]``, or ``NO BETTER THAN ALWAYS ANSWERING pneumonia (62.5% of the images)``; empty without it."""
    base = (figures or {}).get("no_skill")
    if not base:
        return ""
    share = f"{100 * base['majority_share']:.{digits}f}%"
    if figures.get("no_better_than_majority"):
        return f"no better than always answering {base['majority_class']} ({share} of the images)"
    lift, lo, hi = (figures.get(k) for k in ("lift_over_majority", "lift_ci_low", "lift_ci_high"))
    ci = f" [{100 * lo:+.{digits}f}, {100 * hi:+.{digits}f}]" if lo is not None and hi is not None else ""
    return f"no-skill: always {base['majority_class']} {share}, lift {100 * lift:+.{digits}f} points{ci}"


def constant_classifier_match(accuracy: float, counts: Mapping[str, int], decimals: int | None = None) -> str | None:
    """The class whose constant classifier scores ``accuracy`` on a test set of class ``counts`` (equal at the
    precision the figure is given with: ``decimals`` of the proportion, default: those of ``accuracy`` as written,
    at least 3), or None."""
    total = sum(counts.values())
    if not total:
        return None
    d = decimals if decimals is not None else max(3, len(repr(float(accuracy)).split(".")[1]))
    for c, n in counts.items():
        if round(n / total, d) == round(float(accuracy), d):
            return c
    return None
