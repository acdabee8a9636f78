"""Evaluation metrics: per-class and macro figures, bootstrap confidence intervals over split units, paired
differences, calibration, per-source breakdown, and the tables of predictions, ROC points and confusion pairs.

Pure functions over arrays (``y_true`` label indices, ``probs`` class probabilities); the evaluate stage
(:mod:`lungxray.evaluate`) wires them to the preprocessed splits, the trained models, DVC and MLflow.

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
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from .config import Strict

__all__ = [
    "EvaluateParams", "compute_metrics", "summary", "metrics_by_source", "reliability_data", "expected_calibration_error",
    "bootstrap_ci", "paired_difference", "BOOTSTRAP_STATISTICS", "predictions_table", "align_predictions",
    "ovr_auc", "roc_points", "confusion_pairs", "headline", "HEADLINE_KEYS",
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
