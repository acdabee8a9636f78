"""The metrics of one model on one split: per-class and macro / micro figures with their bootstrap intervals and
calibration (:func:`compute_metrics`), their summary and headline, and the per-source breakdown.

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
* Bootstrap intervals: :mod:`lungxray.evaluate.metrics.bootstrap`; ECE: :mod:`lungxray.evaluate.metrics.calibration`.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from lungxray.core.config import Strict
from lungxray.evaluate.metrics.bootstrap import BOOTSTRAP_STATISTICS, bootstrap_ci, unit_codes
from lungxray.evaluate.metrics.calibration import reliability_data
from lungxray.evaluate.metrics.primitives import check_inputs, confusion, json_float, ovr_auc, safe_div


class EvaluateParams(Strict):

    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the confidence intervals (0: none)")
    ci: float = Field(0.95, gt=0, lt=1, description="confidence level of the percentile intervals")
    seed: int = Field(0, description="seed of the bootstrap resampling")
    ece_bins: int = Field(15, ge=1, description="equal-width confidence bins of the expected calibration error and "
                                                "the reliability diagram")
    batch_size: int = Field(64, ge=1, description="inference batch size")
    latency_batches: int = Field(20, ge=1, description="timed batches for the throughput / latency measurement")
    latency_seconds: float = Field(10.0, gt=0, description="each of the two timings (batches, single images) stops "
                                                           "after this long, having timed at least one call")
    source_bootstrap: int = Field(0, ge=0, description="bootstrap resamples for the per-source metrics")
    allow_empty_test: bool = Field(False, description="report an empty test split as absent instead of failing "
                                                      "(a benchmark whose official test split is held back)")
    tta: Literal["none", "shifts", "flips_shifts"] = Field(
        "none", description="test-time augmentation reported beside the plain figures: small shifts/scales "
                            "(+ horizontal flip), mean probability; never vertical flips (lungxray.evaluate.tta)")
    prevalences: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 0.75], description=(
        "set prevalences of the operating points' prevalence table (PPV/NPV from val sensitivity/specificity)"))

    @field_validator("prevalences")
    @classmethod
    def _proportions(cls, v: list[float]) -> list[float]:
        if any(not 0 < x < 1 for x in v):
            raise ValueError(f"prevalences must lie strictly between 0 and 1, got {v}")
        return v


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
    y, p = check_inputs(y_true, probs, classes)
    n, c = p.shape
    y_pred = p.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = confusion(y, y_pred, c)
    per_class, averages = _class_figures(y, p, cm, classes)
    eps = 1e-15
    log_loss = json_float(-np.log(np.clip(p[np.arange(n), y], eps, 1.0)).mean()) if n else None
    rel = reliability_data(y, p, params.ece_bins)
    boot = bootstrap_ci(y, p, params.bootstrap, params.ci, params.seed, units=units)

    from sklearn.metrics import classification_report

    report = classification_report(y, y_pred, labels=list(range(c)), target_names=classes, digits=4,
                                   zero_division=0) if n else ""

    return {
        "n_samples": int(n),
        **averages,
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
                      "resampled": "images" if units is None else "split units", "units": unit_codes(units, n)[1]},
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "matrix": cm.tolist()},
        "reliability": rel,
        "classification_report": report,
    }


def _class_figures(y: np.ndarray, p: np.ndarray, cm: np.ndarray,
                   classes: list[str]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Each class's figures (``per_class``) and their averages (``accuracy`` to ``macro_auc_classes``, in
    :func:`compute_metrics`' key order) from the confusion matrix ``cm`` and the probabilities."""
    n, c = p.shape
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
        sens = safe_div(tp[k], tp[k] + fn[k])
        ppv = safe_div(tp[k], tp[k] + fp[k])
        spec = safe_div(tn[k], tn[k] + fp[k])
        npv = safe_div(tn[k], tn[k] + fn[k])
        f1 = safe_div(2 * tp[k], 2 * tp[k] + fp[k] + fn[k])
        auc, note = ovr_auc(y, p, k) if n else (None, "no samples")
        rec0[k], prec0[k], f10[k] = sens or 0.0, ppv or 0.0, f1 or 0.0
        if present[k] and spec is not None:
            spec_vals.append(spec)
        per_class[name] = {"sensitivity": json_float(sens), "specificity": json_float(spec), "ppv": json_float(ppv), "npv": json_float(npv),
                           "f1": json_float(f1), "support": int(support[k]), "predicted": int(predicted[k]),
                           "auc": json_float(auc), "auc_note": note}

    def macro(v: np.ndarray) -> float | None:
        return json_float(v[present].mean()) if present.any() else None

    aucs = [d["auc"] for d in per_class.values() if d["auc"] is not None]
    micro = safe_div(tp.sum(), n)
    return per_class, {
        "accuracy": json_float(micro),
        "macro_precision": macro(prec0),
        "macro_recall": macro(rec0),
        "macro_f1": macro(f10),
        "micro_precision": json_float(micro),
        "micro_recall": json_float(micro),
        "micro_f1": json_float(micro),
        "weighted_f1": json_float((f10 * support).sum() / n) if n else None,
        "macro_specificity": json_float(np.mean(spec_vals)) if spec_vals else None,
        "macro_auc": json_float(np.mean(aucs)) if aucs else None,
        "macro_auc_classes": len(aucs),
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
    y, p = check_inputs(y_true, probs, classes)
    src = np.asarray(list(sources), dtype=object)
    if src.shape[0] != y.shape[0]:
        raise ValueError(f"{src.shape[0]} sources for {y.shape[0]} samples")
    sub = params.model_copy(update={"bootstrap": params.source_bootstrap})
    u = None if units is None else np.asarray(list(units), dtype=object)
    return {str(s): compute_metrics(y[src == s], p[src == s], classes, sub, None if u is None else u[src == s])
            for s in sorted(set(src.tolist()))}
