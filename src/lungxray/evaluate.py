"""Evaluation: metrics with bootstrap confidence intervals, calibration, plots, inference speed, the leaderboard.

Pure functions over arrays (``y_true`` label indices, ``probs`` class probabilities); the evaluate stage script wires
them to the preprocessed test split, the trained models, DVC and MLflow.

Conventions (they decide what the numbers mean, so they are spelled out):

* ``y_pred`` is the arg-max of ``probs`` (ties: the lowest class index, as ``np.argmax``).
* Per-class values whose denominator is 0 are ``None`` (e.g. the PPV of a class never predicted, the sensitivity of a
  class absent from ``y_true``), never a silent 0.
* Macro precision / recall / F1 average over the classes **present in y_true** (support > 0); inside that average a
  0/0 value counts as 0 (sklearn's ``zero_division=0``). A class absent from the evaluated set (common in per-source
  metrics) therefore neither helps nor hurts. On a test set holding every class this equals sklearn's
  ``average="macro"``.
* Micro precision / recall / F1 pool all classes; for single-label multi-class data they equal the accuracy.
* One-vs-rest ROC-AUC per class is ``None`` when y_true holds no sample of the class or only samples of it (one class
  present: the AUC is undefined), with the reason in ``per_class[c]["auc_note"]``. ``macro_auc`` averages the defined
  per-class AUCs (``macro_auc_classes`` says how many); ``None`` if none is defined. Ties in scores count 1/2
  (Mann-Whitney), as ``sklearn.metrics.roc_auc_score``.
* Bootstrap: ``params.bootstrap`` resamples (seeded; percentile interval at ``ci``) of the **split units**, not of
  the images: a unit is the union of dedupe group and patient (``unit`` in ``split.csv`` and the processed index), and
  images of one unit are not independent (same patient, same X-ray). Each resample draws as many units as there are,
  with replacement, and takes every image of each drawn unit (cluster bootstrap), so proportions are over the
  resample's images. Without units (``units=None``), or with one image per unit, this is the plain image bootstrap.
  A resample in which a class is absent averages macro recall / AUC over the classes it holds (NaN-skipping); the
  interval bounds are ``None`` when ``bootstrap`` is 0 or the statistic is undefined.
* Paired difference (:func:`paired_difference`, used to decide a promotion): two models' predictions on the same
  images, resampled together (the same units in every resample); the interval is the percentile interval of the
  per-resample differences, which is much narrower than comparing two separate intervals.
* Expected calibration error: top-label confidence (max probability) in ``ece_bins`` equal-width bins
  ``[i/n, (i+1)/n)`` (the last closed), ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from .config import Strict
from .plots import pyplot as _pyplot, save_png

if TYPE_CHECKING:
    from .promote import PromotionParams

__all__ = [
    "EvaluateParams", "compute_metrics", "summary", "metrics_by_source", "reliability_data", "expected_calibration_error",
    "bootstrap_ci", "paired_difference", "BOOTSTRAP_STATISTICS", "predictions_table", "align_predictions",
    "ovr_auc", "roc_points", "confusion_pairs", "plot_confusion_matrix", "plot_roc_curves",
    "plot_reliability", "predict_proba", "measure_throughput", "leaderboard", "leaderboard_note", "plot_leaderboard",
    "LEADERBOARD_COLUMNS", "headline", "HEADLINE_KEYS",
]


class EvaluateParams(Strict):

    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the confidence intervals (0: none)")
    ci: float = Field(0.95, gt=0, lt=1, description="confidence level of the percentile intervals")
    seed: int = 0
    ece_bins: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1, description="inference batch size")
    latency_batches: int = Field(20, ge=1, description="timed batches for the throughput / latency measurement")
    source_bootstrap: int = Field(0, ge=0, description="bootstrap resamples for the per-source metrics")
    allow_empty_test: bool = Field(False, description="report an empty test split as absent instead of failing "
                                                      "(a benchmark whose official test split is held back)")


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _f(x) -> float | None:
    """A JSON-able float (None for None / NaN / inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else float(a) / float(b)


def _check_inputs(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray]:
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


def _grouped_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
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
    auc = _grouped_auc(np.asarray(probs, dtype=np.float64)[:, k], pos, np.ones((1, y.size)))[0]
    return float(auc), None


def _bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n, size=(resamples, n))
    flat = (idx + (np.arange(resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _unit_codes(units: Sequence | None, n: int) -> tuple[np.ndarray, int]:
    """Unit index of every image, numbered in order of first appearance (one image per unit: 0..n-1)."""
    if units is None:
        return np.arange(n), n
    u = np.asarray(list(units), dtype=object).astype(str)
    if u.shape[0] != n:
        raise ValueError(f"{u.shape[0]} units for {n} samples")
    codes, uniques = pd.factorize(u)
    return codes.astype(np.int64), len(uniques)


BOOTSTRAP_STATISTICS = ("accuracy", "macro_recall", "macro_auc")


def _weighted_statistics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro recall and macro AUC for each row of image multiplicities ``w`` (B, N); NaN where undefined."""
    b, c = w.shape[0], p.shape[1]
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    total = w.sum(axis=1)
    recalls = np.full((b, c), np.nan)
    aucs = np.full((b, c), np.nan)
    for k in range(c):
        pos = y == k
        if not pos.any():
            continue
        support = w @ pos.astype(np.float64)
        hits = w @ (correct * pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls[:, k] = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
        if not pos.all():
            aucs[:, k] = _grouped_auc(p[:, k], pos, w)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nanmean():
        return {"accuracy": np.where(total > 0, (w @ correct) / np.where(total > 0, total, 1), np.nan),
                "macro_recall": np.nanmean(recalls, axis=1), "macro_auc": np.nanmean(aucs, axis=1)}


def _resampled_statistics(y: np.ndarray, probs: Sequence[np.ndarray], units: Sequence | None, resamples: int,
                          seed: int, chunk: int | None = None) -> list[dict[str, np.ndarray]]:
    """The statistics of each model in ``probs`` over the same ``resamples`` unit resamples (vectorised, chunked)."""
    n = y.shape[0]
    codes, n_units = _unit_codes(units, n)
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, min(resamples, 4_000_000 // max(n, 1)))
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in probs]
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        w = _bootstrap_counts(n_units, b, rng)[:, codes]  # every image weighs as often as its unit was drawn
        for i, p in enumerate(probs):
            parts[i].append(_weighted_statistics(y, p, w))
        done += b
    return [{k: np.concatenate([d[k] for d in per]) for k in BOOTSTRAP_STATISTICS} for per in parts]


def _interval(v: np.ndarray, ci: float) -> dict[str, float | None]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"low": None, "high": None}
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return {"low": _f(lo), "high": _f(hi)}


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, resamples: int, ci: float = 0.95, seed: int = 0,
                 chunk: int | None = None, units: Sequence | None = None) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals of accuracy, macro recall and macro AUC, resampling ``units`` (cluster bootstrap;
    ``None``: each image is its own unit).

    Each resample is a multiplicity vector over the samples; the statistics are weighted sums, so no resampled
    array is ever materialised. Chunks bound memory at about 32 MB of weights.
    """
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if resamples <= 0 or y.shape[0] == 0:
        return {k: {"low": None, "high": None} for k in BOOTSTRAP_STATISTICS}
    stats = _resampled_statistics(y, [p], units, resamples, seed, chunk)[0]
    return {k: _interval(stats[k], ci) for k in BOOTSTRAP_STATISTICS}


def paired_difference(y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, statistic: str, resamples: int,
                      ci: float = 0.95, seed: int = 0, units: Sequence | None = None) -> dict[str, Any]:
    """``statistic`` of model a minus that of model b on the same images, with a paired percentile bootstrap interval.

    Both models are scored on the same resampled ``units`` in every resample. Returns ``a``, ``b`` and
    ``difference`` (on all images), ``low`` / ``high`` (None when no resample defines the statistic),
    ``resamples``, ``ci``, ``seed``, ``units`` and ``images``.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise ValueError(f"no paired bootstrap for {statistic!r}; use one of {list(BOOTSTRAP_STATISTICS)}")
    y = np.asarray(y_true, dtype=np.int64)
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if pa.shape != pb.shape or pa.shape[0] != y.shape[0]:
        raise ValueError(f"paired predictions differ in shape: {pa.shape} and {pb.shape} for {y.shape[0]} labels")
    ones = np.ones((1, y.shape[0]))
    a, b = (_f(_weighted_statistics(y, p, ones)[statistic][0]) for p in (pa, pb))
    out = {"statistic": statistic, "a": a, "b": b, "difference": None if a is None or b is None else a - b,
           "low": None, "high": None, "resamples": int(resamples), "ci": ci, "seed": seed,
           "units": _unit_codes(units, y.shape[0])[1], "images": int(y.shape[0])}
    if resamples > 0 and y.shape[0]:
        sa, sb = _resampled_statistics(y, [pa, pb], units, resamples, seed)
        out.update(_interval(sa[statistic] - sb[statistic], ci))
    return out


class _quiet_nanmean:
    """Silence 'Mean of empty slice' (all-NaN rows are expected and give NaN)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


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
        acc = _div(sum_acc[i], count[i])
        mc = _div(sum_conf[i], count[i])
        gap = None if acc is None else abs(acc - mc)
        if gap is not None:
            ece += count[i] / n * gap
            mce = max(mce, gap)
        rows.append({"lower": i / bins, "upper": (i + 1) / bins, "count": int(count[i]), "accuracy": _f(acc),
                     "confidence": _f(mc), "gap": _f(gap)})
    return {"bins": rows, "n_bins": bins, "ece": _f(ece) if n else None, "mce": _f(mce) if n else None,
            "n_samples": int(n)}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float | None:
    return reliability_data(y_true, probs, bins)["ece"]


# ---------------------------------------------------------------------------------------------------------------------
# metrics

BULKY_KEYS = ("confusion_matrix", "reliability", "classification_report")


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                    params: EvaluateParams | None = None, units: Sequence | None = None) -> dict[str, Any]:
    """All test metrics of one model as a JSON-able dict (see the module docstring for the conventions).

    Top-level scalar keys: ``n_samples, accuracy, macro_precision, macro_recall, macro_f1, micro_precision,
    micro_recall, micro_f1, weighted_f1, macro_auc, macro_auc_classes, macro_specificity, ece, mce, log_loss,
    accuracy_ci_low/high, macro_recall_ci_low/high, macro_auc_ci_low/high``; nested: ``per_class`` ({class:
    {sensitivity, specificity, ppv, npv, f1, support, predicted, auc, auc_note}}), ``bootstrap`` (resamples, ci,
    seed, what was resampled and how many units), and the bulky ``confusion_matrix`` ({labels, matrix}),
    ``reliability`` and ``classification_report`` (text) which :func:`summary` drops.
    """
    params = params or EvaluateParams()
    classes = list(classes)
    y, p = _check_inputs(y_true, probs, classes)
    n, c = p.shape
    y_pred = p.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = confusion(y, y_pred, c)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fn = support - tp
    fp = predicted - tp
    tn = n - tp - fn - fp

    per_class: dict[str, dict] = {}
    present = support > 0
    rec0, prec0, f10 = np.zeros(c), np.zeros(c), np.zeros(c)  # zero_division=0 versions for the macro means
    spec_vals = []
    for k, name in enumerate(classes):
        sens = _div(tp[k], tp[k] + fn[k])
        ppv = _div(tp[k], tp[k] + fp[k])
        spec = _div(tn[k], tn[k] + fp[k])
        npv = _div(tn[k], tn[k] + fn[k])
        f1 = _div(2 * tp[k], 2 * tp[k] + fp[k] + fn[k])
        auc, note = ovr_auc(y, p, k) if n else (None, "no samples")
        rec0[k], prec0[k], f10[k] = sens or 0.0, ppv or 0.0, f1 or 0.0
        if present[k] and spec is not None:
            spec_vals.append(spec)
        per_class[name] = {"sensitivity": _f(sens), "specificity": _f(spec), "ppv": _f(ppv), "npv": _f(npv),
                           "f1": _f(f1), "support": int(support[k]), "predicted": int(predicted[k]),
                           "auc": _f(auc), "auc_note": note}

    def macro(v: np.ndarray) -> float | None:
        return _f(v[present].mean()) if present.any() else None

    weighted_f1 = _f((f10 * support).sum() / n) if n else None
    aucs = [d["auc"] for d in per_class.values() if d["auc"] is not None]
    micro = _div(tp.sum(), n)
    eps = 1e-15
    log_loss = _f(-np.log(np.clip(p[np.arange(n), y], eps, 1.0)).mean()) if n else None
    rel = reliability_data(y, p, params.ece_bins)
    boot = bootstrap_ci(y, p, params.bootstrap, params.ci, params.seed, units=units)

    from sklearn.metrics import classification_report

    report = classification_report(y, y_pred, labels=list(range(c)), target_names=classes, digits=4,
                                   zero_division=0) if n else ""

    return {
        "n_samples": int(n),
        "accuracy": _f(micro),
        "macro_precision": macro(prec0),
        "macro_recall": macro(rec0),
        "macro_f1": macro(f10),
        "micro_precision": _f(micro),
        "micro_recall": _f(micro),
        "micro_f1": _f(micro),
        "weighted_f1": weighted_f1,
        "macro_specificity": _f(np.mean(spec_vals)) if spec_vals else None,
        "macro_auc": _f(np.mean(aucs)) if aucs else None,
        "macro_auc_classes": len(aucs),
        "ece": rel["ece"],
        "mce": rel["mce"],
        "log_loss": log_loss,
        "accuracy_ci_low": boot["accuracy"]["low"],
        "accuracy_ci_high": boot["accuracy"]["high"],
        "macro_recall_ci_low": boot["macro_recall"]["low"],
        "macro_recall_ci_high": boot["macro_recall"]["high"],
        "macro_auc_ci_low": boot["macro_auc"]["low"],
        "macro_auc_ci_high": boot["macro_auc"]["high"],
        "bootstrap": {"resamples": params.bootstrap, "ci": params.ci, "seed": params.seed, "method": "percentile",
                      "resampled": "images" if units is None else "split units", "units": _unit_codes(units, n)[1]},
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "matrix": cm.tolist()},
        "reliability": rel,
        "classification_report": report,
    }


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without the bulky entries (confusion matrix, reliability bins, report text): for ``dvc metrics``."""
    return {k: v for k, v in metrics.items() if k not in BULKY_KEYS}


HEADLINE_KEYS = tuple(f"{k}{s}" for k in BOOTSTRAP_STATISTICS for s in ("", "_ci_low", "_ci_high")) + ("ece",)


def headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The headline figures of one split (accuracy, macro recall, macro AUC with their intervals, ECE), the only DVC
    metrics, so that ``dvc metrics show`` stays a narrow table; all ``None`` when the split was not evaluated."""
    return {k: (metrics or {}).get(k) for k in HEADLINE_KEYS}


def metrics_by_source(y_true: np.ndarray, probs: np.ndarray, sources: Sequence[str], classes: Sequence[str],
                      params: EvaluateParams | None = None, units: Sequence | None = None) -> dict[str, dict[str, Any]]:
    """:func:`compute_metrics` per source (sorted by name), with ``params.source_bootstrap`` resamples (default 0) of
    the ``units`` (None: of the images)."""
    params = params or EvaluateParams()
    y, p = _check_inputs(y_true, probs, classes)
    src = np.asarray(list(sources), dtype=object)
    if src.shape[0] != y.shape[0]:
        raise ValueError(f"{src.shape[0]} sources for {y.shape[0]} samples")
    sub = params.model_copy(update={"bootstrap": params.source_bootstrap})
    u = None if units is None else np.asarray(list(units), dtype=object)
    return {str(s): compute_metrics(y[src == s], p[src == s], classes, sub, None if u is None else u[src == s])
            for s in sorted(set(src.tolist()))}


# ---------------------------------------------------------------------------------------------------------------------
# per-image predictions (what a paired comparison of two models needs)

PROB_PREFIX = "prob_"


def predictions_table(ids: Sequence[str], units: Sequence[str], y_true: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str]) -> pd.DataFrame:
    """One row per image: ``id``, ``unit``, ``label`` (class name), then ``prob_<class>`` for every class."""
    classes = list(classes)
    y, p = _check_inputs(y_true, probs, classes)
    df = pd.DataFrame({"id": list(ids), "unit": list(units), "label": np.asarray(classes, dtype=object)[y]})
    if len(df) != y.shape[0]:
        raise ValueError(f"{len(df)} ids for {y.shape[0]} samples")
    for k, c in enumerate(classes):
        df[f"{PROB_PREFIX}{c}"] = p[:, k]
    return df


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
    y = a["label"].map({c: i for i, c in enumerate(ca)}).to_numpy(dtype=np.int64)
    cols = [f"{PROB_PREFIX}{c}" for c in ca]
    return y, a[cols].to_numpy(np.float64), b[cols].to_numpy(np.float64), a["unit"].astype(str).to_numpy()


# ---------------------------------------------------------------------------------------------------------------------
# DVC plot data


def roc_points(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest ROC curve points: columns class, fpr, tpr, threshold (classes with an undefined curve skipped).

    Infinite thresholds (sklearn's first point) are written as the float max so the CSV/JSON stays finite.
    """
    from sklearn.metrics import roc_curve

    y, p = _check_inputs(y_true, probs, classes)
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


# ---------------------------------------------------------------------------------------------------------------------
# plots


def _save(fig, path: str | os.PathLike) -> Path:
    return save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_confusion_matrix(cm, classes: Sequence[str], path: str | os.PathLike, normalize: bool = False,
                          title: str | None = None) -> Path:
    """Heat map of the confusion matrix (rows = true); ``normalize`` divides each row by its support."""
    plt = _pyplot()
    m = np.asarray(cm, dtype=np.float64)
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * c + 3, 1.1 * c + 2.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, m.max()))
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(c), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(c), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = (1 if normalize else m.max()) / 2
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if m[i, j] > thresh else "black", fontsize=9)
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    return _save(fig, path)


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                    title: str | None = None) -> Path:
    """One-vs-rest ROC curves with the AUC per class in the legend."""
    plt = _pyplot()
    pts = roc_points(y_true, probs, classes)
    y, p = _check_inputs(y_true, probs, classes)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for k, name in enumerate(classes):
        d = pts[pts["class"] == name]
        if d.empty:
            continue
        auc, _ = ovr_auc(y, p, k)
        ax.plot(d["fpr"], d["tpr"], lw=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC curves, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(reliability: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Reliability diagram from :func:`reliability_data` (bars: accuracy per confidence bin; counts below)."""
    plt = _pyplot()
    bins = reliability["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    count = np.array([b["count"] for b in bins])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(lower, np.nan_to_num(acc), width=width, align="edge", edgecolor="k", alpha=0.8, label="accuracy")
    ax.bar(lower, np.nan_to_num(conf - acc), bottom=np.nan_to_num(acc), width=width, align="edge", color="tab:red",
           alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = reliability.get("ece")
    ax.set_title(title or (f"reliability (ECE {ece:.3f})" if ece is not None else "reliability"))
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(lower, count, width=width, align="edge", edgecolor="k", color="tab:gray")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("confidence (top-label probability)")
    ax2.set_ylabel("count")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# inference


def _device(device) -> "torch.device":  # noqa: F821
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)


def predict_proba(model, images: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float],
                  batch_size: int = 64, device="cpu", in_chans: int = 3) -> np.ndarray:
    """Class probabilities (N, C) float64 for uint8 greyscale images (N, S, S), normalised as in training.

    x/255, then (x - mean[c]) / std[c] per channel with the model's own statistics (model.pt's ``mean``/``std``: its
    pretrained weights' or the train split's; one value applies to every channel); the grey channel is replicated to
    ``in_chans`` (3 for ImageNet-shaped stems) per batch, so only one batch is ever in float. Works on memory-mapped
    arrays.
    """
    import torch

    dev = _device(device)
    imgs = np.asarray(images) if not isinstance(images, np.memmap) else images
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, S, S) uint8, got shape {imgs.shape}")
    model = model.to(dev).eval()
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)[:, :in_chans].to(dev)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)[:, :in_chans].to(dev)
    out = []
    with torch.inference_mode():
        for i in range(0, imgs.shape[0], batch_size):
            x = torch.from_numpy(np.array(imgs[i:i + batch_size], dtype=np.uint8, copy=True)).to(dev)
            x = ((x.float().div_(255.0).unsqueeze(1) - m) / s).expand(-1, in_chans, -1, -1).contiguous()
            out.append(torch.softmax(model(x).float(), dim=1).double().cpu().numpy())
    if not out:
        with torch.inference_mode():
            s = imgs.shape[1] if imgs.ndim == 3 else 1
            c = model(torch.zeros(1, in_chans, s, s, device=dev)).shape[1]
        return np.zeros((0, c))
    return np.concatenate(out)


def measure_throughput(model, image_size: int, batch_size: int = 64, device="cpu", n_batches: int = 20,
                       warmup: int = 3, single_runs: int | None = None, in_chans: int = 3) -> dict[str, Any]:
    """Batched throughput (images/s) and median single-image latency (ms) of ``model`` on random inputs.

    ``warmup`` untimed batches (and single images) first; CUDA is synchronised around every timed call. The result
    says what was measured: device, batch size, torch threads, batches and single runs timed.
    """
    import torch

    dev = _device(device)
    model = model.to(dev).eval()
    single_runs = single_runs or max(n_batches, 10)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch_size, in_chans, image_size, image_size, generator=gen).to(dev)
    x1 = xb[:1].contiguous()
    with torch.inference_mode():
        for _ in range(warmup):
            model(xb)
            model(x1)
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(xb)
        sync()
        batched_s = time.perf_counter() - t0
        lat = []
        for _ in range(single_runs):
            sync()
            t = time.perf_counter()
            model(x1)
            sync()
            lat.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (os.uname().machine if hasattr(os, "uname")
                                                                       else "cpu")
    return {
        "images_per_s": float(batch_size * n_batches / batched_s) if batched_s > 0 else None,
        "latency_ms_median": float(statistics.median(lat) * 1000.0),
        "latency_ms_p90": float(np.quantile(lat, 0.9) * 1000.0),
        "device": str(dev),
        "device_name": name,
        "batch_size": int(batch_size),
        "image_size": int(image_size),
        "torch_threads": int(torch.get_num_threads()),
        "n_batches": int(n_batches),
        "single_runs": int(single_runs),
        "warmup": int(warmup),
    }


# ---------------------------------------------------------------------------------------------------------------------
# leaderboard

LEADERBOARD_COLUMNS = [
    "rank", "model", "val_macro_recall", "val_macro_recall_ci_low", "val_macro_recall_ci_high", "test_macro_recall",
    "test_macro_recall_ci_low", "test_macro_recall_ci_high", "test_accuracy", "test_accuracy_ci_low",
    "test_accuracy_ci_high", "test_macro_auc", "test_macro_auc_ci_low", "test_macro_auc_ci_high",
    "trainable_parameters", "seconds_per_epoch", "epochs_to_converge", "images_per_s",
]
REPORTED_TEST = ("test_macro_recall", "test_accuracy", "test_macro_auc")


def leaderboard(rows: list[dict[str, Any]], promotion: PromotionParams | None = None) -> tuple[pd.DataFrame, str]:
    """The comparison table in the promotion rule's order, and its markdown (a note on the selection, then the table).

    Rows carry (missing -> empty) the selection metric (``promotion.metric``, default ``val_macro_recall``) and its
    ``_ci_low`` / ``_ci_high``, the reported ``test_macro_recall``, ``test_accuracy``, ``test_macro_auc`` (each with
    its interval), ``trainable_parameters, seconds_per_epoch, epochs_to_converge, images_per_s``; other keys are kept
    as extra columns. Order: :func:`lungxray.promote.rank` with ``promotion`` (a
    :class:`lungxray.promote.PromotionParams`: metric, direction, tie breaker, tie tolerance), so the first row is the
    model the promotion step picks.
    """
    from .promote import PromotionParams, rank

    pp = promotion or PromotionParams()
    ordered = rank([dict(r) for r in rows], pp)
    for i, r in enumerate(ordered, 1):
        r["rank"] = i
    first = ["rank", "model", pp.metric, f"{pp.metric}_ci_low", f"{pp.metric}_ci_high"]
    columns = first + [c for c in LEADERBOARD_COLUMNS if c not in first]
    extra = sorted({k for r in ordered for k in r} - set(columns))
    df = pd.DataFrame(ordered, columns=columns + extra)
    return df, leaderboard_note(pp) + "\n" + _markdown(df, pp.metric)


def leaderboard_note(promotion: PromotionParams) -> str:
    """What chose the order (metric, direction, tie breaker) and what the test figures are for."""
    p = promotion
    note = (f"Ranked by `{p.metric}` ({'higher' if p.higher_is_better else 'lower'} is better); values within "
            f"{p.tie_tolerance:g} tie and ties go to fewer `{p.tie_breaker}`, then the name. Row 1 is the model the "
            f"register stage considers for champion.")
    if p.metric.startswith("test_"):
        return note + (" Selection uses a **test** metric: the test figures below are then optimistic (the best of "
                       "several noisy scores on the data that reports them).\n")
    return note + (" Test figures are reported once, for information: they were not used for selection.\n")


def _fmt_ci(v, lo, hi) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = f"{v:.4f}"
    if lo is not None and hi is not None and not (isinstance(lo, float) and math.isnan(lo)) and not (
            isinstance(hi, float) and math.isnan(hi)):
        s += f" [{lo:.4f}, {hi:.4f}]"
    return s


def _fmt_num(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    return f"{float(v):.{digits}f}"


def _label(metric: str) -> str:
    return metric.replace("_", " ").replace(" auc", " AUC")


def _markdown(df: pd.DataFrame, metric: str) -> str:
    scored = [metric] + [m for m in REPORTED_TEST if m != metric]
    head = (["#", "model"] + [f"{_label(m)} [95% CI]" + (" (selection)" if m == metric else "") for m in scored]
            + ["trainable params", "s / epoch", "epochs", "images / s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:", ":---"] + ["---:"] * (len(head) - 2)) + "|"]

    def g(r, k):
        v = r.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    for r in df.to_dict("records"):
        cells = ([str(r["rank"]), str(r["model"])]
                 + [_fmt_ci(g(r, m), g(r, f"{m}_ci_low"), g(r, f"{m}_ci_high")) for m in scored]
                 + [_fmt_num(g(r, "trainable_parameters"), 0), _fmt_num(g(r, "seconds_per_epoch"), 1),
                    _fmt_num(g(r, "epochs_to_converge"), 0), _fmt_num(g(r, "images_per_s"), 1)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_leaderboard(df: pd.DataFrame, path: str | os.PathLike, metrics: Sequence[str] | None = None,
                     title: str | None = None, promotion: PromotionParams | None = None) -> Path:
    """Grouped bars per model (leaderboard order) with the bootstrap intervals as error bars.

    ``metrics`` default: the selection metric of ``promotion`` (default ``val_macro_recall``), then the reported test
    macro recall, accuracy and macro AUC.
    """
    from .promote import PromotionParams

    pp = promotion or PromotionParams()
    metrics = list(metrics or [pp.metric] + [m for m in REPORTED_TEST if m != pp.metric])
    plt = _pyplot()
    models = df["model"].astype(str).tolist()
    x = np.arange(len(models))
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(models) + 2), 4.5))
    lows = []
    for i, m in enumerate(metrics):
        v = pd.to_numeric(df.get(m, pd.Series([np.nan] * len(df))), errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(df.get(f"{m}_ci_low", pd.Series([np.nan] * len(df))), errors="coerce").to_numpy(float)
        hi = pd.to_numeric(df.get(f"{m}_ci_high", pd.Series([np.nan] * len(df))), errors="coerce").to_numpy(float)
        err = np.vstack([np.nan_to_num(v - lo, nan=0.0).clip(0), np.nan_to_num(hi - v, nan=0.0).clip(0)])
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(v), width, yerr=err, capsize=3,
               label=_label(m) + (" (selection)" if m == pp.metric else ""), hatch="//" if m == pp.metric else None)
        lows.extend(np.concatenate([v, lo])[np.isfinite(np.concatenate([v, lo]))].tolist())
    bottom = max(0.0, min(lows) - 0.05) if lows else 0.0
    ax.set_ylim(bottom, 1.0)
    ax.set_xticks(x, labels=models, rotation=30, ha="right")
    ax.set_ylabel("score (error bars: bootstrap CI over split units)")
    used = "test: reported, not used" if not pp.metric.startswith("test_") else "selected on a test metric"
    ax.set_title(title or f"ranked by {_label(pp.metric)} ({used})")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
