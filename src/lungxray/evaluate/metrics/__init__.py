"""Evaluation metrics: per-class and macro figures, bootstrap confidence intervals over split units, paired
differences, calibration, per-source breakdown, and the tables of predictions, ROC points and confusion pairs.

Pure functions over arrays (``y_true`` label indices, ``probs`` class probabilities); the evaluate stage
(:mod:`lungxray.evaluate`) wires them to the preprocessed splits, the trained models, DVC and MLflow.

The package, from the ground up; each module's docstring spells out the conventions that decide what its numbers
mean:

* :mod:`.primitives`: input checks, the confusion matrix, the Mann-Whitney ROC-AUC (ties count 1/2), JSON-able
  floats.
* :mod:`.bootstrap`: percentile intervals from resampled **split units** (cluster bootstrap), and the paired
  difference of two models on the same resamples (:func:`paired_difference`, used to decide a promotion).
* :mod:`.calibration`: the reliability diagram and the expected calibration error (``ece_bins`` equal-width bins).
* :mod:`.classification`: :func:`compute_metrics` (per class, macro and micro averages, with the intervals and the
  calibration), its summary and headline, and the per-source breakdown; :class:`EvaluateParams` are its settings.
* :mod:`.operating`: sensitivity / specificity of stored operating points with intervals, and their PPV / NPV at
  other prevalences.
* :mod:`.no_skill`: the no-skill line beside every figure: the constant classifiers (majority share, prevalences,
  macro recall 1/k, AUC 0.5) and the model's lift over the majority class with its interval and flag.
* :mod:`.tables`: the per-image predictions (what a paired comparison of two models needs) and the DVC plot data.
"""

from lungxray.evaluate.metrics.bootstrap import BOOTSTRAP_STATISTICS, bootstrap_ci, paired_difference
from lungxray.evaluate.metrics.calibration import expected_calibration_error, reliability_data
from lungxray.evaluate.metrics.classification import (
    HEADLINE_KEYS,
    EvaluateParams,
    compute_metrics,
    headline,
    metrics_by_source,
    summary,
)
from lungxray.evaluate.metrics.no_skill import (
    LIFT_KEYS,
    constant_classifier_match,
    constant_classifiers,
    no_skill,
    no_skill_note,
    with_no_skill,
)
from lungxray.evaluate.metrics.operating import operating_point_metrics, prevalence_table
from lungxray.evaluate.metrics.primitives import ovr_auc
from lungxray.evaluate.metrics.tables import align_predictions, confusion_pairs, predictions_table, roc_points

__all__ = [
    "EvaluateParams", "compute_metrics", "summary", "metrics_by_source", "reliability_data", "expected_calibration_error",
    "bootstrap_ci", "paired_difference", "BOOTSTRAP_STATISTICS", "predictions_table", "align_predictions",
    "ovr_auc", "roc_points", "confusion_pairs", "headline", "HEADLINE_KEYS", "operating_point_metrics",
    "prevalence_table", "no_skill", "with_no_skill", "no_skill_note", "constant_classifiers",
    "constant_classifier_match", "LIFT_KEYS",
]
