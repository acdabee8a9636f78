"""The figures of leave-one-source-out, and the report that shows them beside the in-source ones.

* A fold model's figures on its held-out source are :func:`lungxray.evaluate.metrics.compute_metrics` on every kept
  image of that source (macro averages over the classes the source has; a class it lacks has no sensitivity and no AUC),
  with the evaluate settings and the source's split units for the bootstrap, with the no-skill line of that source's
  images (its majority class's share and the lift over it: :mod:`lungxray.evaluate.metrics.no_skill`).
* Per-class intervals (:func:`per_class_intervals`) come from :func:`lungxray.evaluate.metrics.bootstrap_ci` on the
  images each figure is a proportion of, resampling their split units: sensitivity of class ``c`` on the images of ``c``
  (the accuracy of the arg-max there), specificity on the other images (the share not predicted ``c``), the one-vs-rest
  AUC on all images (a two-class problem whose macro AUC is that AUC).
* Beside each fold model: the in-source test figures of the same architecture (``metrics/<model>/eval.json`` of the
  evaluate stage): the whole test split, and the held-out source's own test images (``by_source``). The **gap** is
  the external macro recall minus the in-source macro recall on that source's test images (negative: the model does
  worse on a source it never saw).
* The leaderboard's external figure of an architecture (:func:`external_summary`) is its mean macro recall over the
  held-out sources it was run on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lungxray.core.numbers import fmt, fmt_interval
from lungxray.core.plots import pyplot, save_png
from lungxray.evaluate import metrics
from lungxray.evaluate.metrics import EvaluateParams

SHORT_KEYS = ("n_samples", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_recall", "macro_recall_ci_low",
              "macro_recall_ci_high", "macro_auc", "macro_auc_ci_low", "macro_auc_ci_high", "macro_specificity",
              "ece")


def per_class_intervals(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], params: EvaluateParams,
                        units: Sequence | None) -> dict[str, dict]:
    """``{class: {sensitivity_ci_low/high, specificity_ci_low/high, auc_ci_low/high}}`` (rules: module docstring);
    None where the images a figure is computed on are absent or ``params.bootstrap`` is 0."""
    y, p = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    u = np.asarray(list(units) if units is not None else [str(i) for i in range(len(y))], dtype=object)
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    out = {}
    for k, name in enumerate(classes):
        pos = y == k
        sens = _proportion_ci(pred[pos] == k, u[pos], params)
        spec = _proportion_ci(pred[~pos] != k, u[~pos], params)
        auc = _boot(pos.astype(np.int64), np.stack([1.0 - p[:, k], p[:, k]], axis=1), u, params)["macro_auc"]
        out[name] = {"sensitivity_ci_low": sens["low"], "sensitivity_ci_high": sens["high"],
                     "specificity_ci_low": spec["low"], "specificity_ci_high": spec["high"],
                     "auc_ci_low": auc["low"] if pos.any() and not pos.all() else None,
                     "auc_ci_high": auc["high"] if pos.any() and not pos.all() else None}
    return out


def _proportion_ci(hit: np.ndarray, units: np.ndarray, params: EvaluateParams) -> dict:
    """Interval of the share of ``hit`` (bootstrap_ci's accuracy of a two-class problem that is right where hit)."""
    hit = hit.astype(np.float64)
    return _boot(np.zeros(len(hit), dtype=np.int64), np.stack([hit, 1.0 - hit], axis=1), units, params)["accuracy"]


def _boot(y: np.ndarray, probs: np.ndarray, units: np.ndarray, params: EvaluateParams) -> dict:
    return metrics.bootstrap_ci(y, probs, params.bootstrap, params.ci, params.seed, units=units.tolist())


def fold_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], params: EvaluateParams,
                 units: Sequence) -> dict[str, Any]:
    """A fold model's figures on its held-out source: the headline figures with intervals and, per class present in
    it, support, sensitivity, specificity and AUC (None where undefined, with ``auc_note``) with intervals."""
    m = metrics.compute_metrics(y, probs, classes, params, units=units)
    m = metrics.with_no_skill(m, y, probs, classes, params, units)
    ci = per_class_intervals(y, probs, classes, params, units)
    per_class = {c: {k: d[k] for k in ("support", "sensitivity", "specificity", "auc", "auc_note")} | ci[c]
                 for c, d in m["per_class"].items() if d["support"] > 0}
    return {**{k: m.get(k) for k in SHORT_KEYS + metrics.LIFT_KEYS}, "no_skill": m["no_skill"],
            "units": m["bootstrap"]["units"], "per_class": per_class,
            "confusion_matrix": m["confusion_matrix"]}


def in_source_figures(test: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """The in-source figures beside a fold model's: the same architecture's test figures (the plan's
    :func:`lungxray.external.plan.in_source_test`), whole test split and ``source``'s test images; None when that
    architecture was not evaluated in-source."""
    if test is None:
        return None
    own = (test.get("by_source") or {}).get(source) or {}
    return {"test_macro_recall": test.get("macro_recall"), "test_macro_recall_ci_low": test.get("macro_recall_ci_low"),
            "test_macro_recall_ci_high": test.get("macro_recall_ci_high"), "test_accuracy": test.get("accuracy"),
            "source_test_images": own.get("n_samples"), "source_test_macro_recall": own.get("macro_recall"),
            "source_test_accuracy": own.get("accuracy")}


def gap(external: float | None, in_source: dict | None) -> float | None:
    """External macro recall minus the in-source macro recall on the held-out source's test images."""
    ref = (in_source or {}).get("source_test_macro_recall")
    return None if external is None or ref is None else external - ref


def external_summary(folds: dict[str, dict]) -> dict[str, dict]:
    """Per architecture: mean macro recall over the held-out sources it ran on (and over how many)."""
    values: dict[str, list[float]] = {}
    for fold in folds.values():
        for model, r in fold["models"].items():
            if r.get("macro_recall") is not None:
                values.setdefault(model, []).append(r["macro_recall"])
    return {m: {"mean_macro_recall": float(np.mean(v)), "folds": len(v)} for m, v in sorted(values.items())}


# ---------------------------------------------------------------------------------------------------------------------
# markdown and figure


def _ci(d: dict, key: str, low: str | None = None, high: str | None = None) -> str:
    return fmt_interval(d.get(key), d.get(low or f"{key}_ci_low"), d.get(high or f"{key}_ci_high"))


def external_markdown(report: dict) -> str:
    """``reports/external.md``: the rule, the summary per architecture, then one section per held-out source."""
    lines = ["# External validity: leave-one-source-out", "",
             "Each architecture is trained on all sources but one and tested on every kept image of the held-out "
             "source (no image of a patient or X-ray of that source trains it). *In-source* is the same architecture "
             "trained on every source (evaluate stage, test split); *gap* = external macro recall minus the "
             "in-source macro recall on that source's own test images. Intervals: "
             f"{report['ci']:.0%} bootstrap over split units.", "",
             f"Models: {', '.join(report['models'])} ({report['models_rule']}). Sources: {report['sources_rule']}.",
             ""]
    if report.get("epochs"):
        lines += [f"Epochs per fold: {report['epochs']} (`external.epochs`; the in-source models may have trained "
                  f"longer).", ""]
    lines += ["| model | external macro recall (mean over held-out sources) | folds |", "|:---|---:|---:|"]
    lines += [f"| {m} | {fmt(s['mean_macro_recall'])} | {s['folds']} |" for m, s in report["summary"].items()]
    for source, fold in report["folds"].items():
        lines += ["", *_fold_markdown(source, fold)]
    for source, why in report.get("skipped", {}).items():
        lines += ["", f"Not held out: `{source}`: {why}."]
    return "\n".join(lines) + "\n"


def _fold_markdown(source: str, fold: dict) -> list[str]:
    classes = ", ".join(f"{c} {n}" for c, n in fold["classes"].items())
    lines = [f"## held out: {source}", "",
             f"{fold['images']} images ({fold['units']} units): {classes}. Trained on {', '.join(fold['trained_on'])}"
             f" ({fold['train_images']} train, {fold['val_images']} val images); excluded for sharing a unit with "
             f"{source}: {fold['excluded']['train']} train, {fold['excluded']['val']} val images."]
    if fold["untrained_classes"]:
        lines.append(f"No training image of: {', '.join(fold['untrained_classes'])} (the model cannot recognise them).")
    lines += ["", "| model | external macro recall | accuracy | no-skill (constant classifiers) | macro AUC | "
              f"in-source test macro recall | in-source on {source}'s test images | gap |",
              "|:---|---:|---:|:---|---:|---:|---:|---:|"]
    for model, r in fold["models"].items():
        ins = r.get("in_source") or {}
        own = ins.get("source_test_macro_recall")
        lines.append(f"| {model} | {_ci(r, 'macro_recall')} | {_ci(r, 'accuracy')} | "
                     f"{metrics.no_skill_note(r) or '-'} | {_ci(r, 'macro_auc')} | {_ci(ins, 'test_macro_recall')} | {fmt(own)} "
                     f"({ins.get('source_test_images') or 0} images) | {fmt(r.get('gap'))} |")
    for model, r in fold["models"].items():
        lines += ["", f"{model} per class on {source}:", "",
                  "| class | images | sensitivity | specificity | AUC |", "|:---|---:|---:|---:|---:|"]
        for c, d in r["per_class"].items():
            auc = _ci(d, "auc") if d["auc"] is not None else f"- ({d['auc_note']})"
            lines.append(f"| {c} | {d['support']} | {_ci(d, 'sensitivity')} | {_ci(d, 'specificity')} | {auc} |")
    return lines


def plot_external(report: dict, path: str | os.PathLike) -> Path:
    """Bars: external macro recall per held-out source and architecture (bootstrap intervals); dots: the in-source
    macro recall of the same architecture on that source's test images."""
    plt = pyplot()
    sources, models = list(report["folds"]), list(report["models"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(sources) + 2), 4.5))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(sources))
    for i, model in enumerate(models):
        rows = [report["folds"][s]["models"].get(model, {}) for s in sources]
        v = np.array([np.nan if r.get("macro_recall") is None else r["macro_recall"] for r in rows])
        lo = np.array([np.nan if r.get("macro_recall_ci_low") is None else r["macro_recall_ci_low"] for r in rows])
        hi = np.array([np.nan if r.get("macro_recall_ci_high") is None else r["macro_recall_ci_high"] for r in rows])
        err = np.vstack([np.nan_to_num(v - lo).clip(0), np.nan_to_num(hi - v).clip(0)])
        pos = x + (i - (len(models) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(v), width, yerr=err, capsize=3, label=f"{model}: external")
        own = [((r.get("in_source") or {}).get("source_test_macro_recall")) for r in rows]
        ax.scatter(pos, [np.nan if o is None else o for o in own], marker="D", color="k", zorder=3,
                   label="in-source, that source's test images" if i == 0 else None)
    ax.set_ylim(0, 1.0)
    ax.set_xticks(x, labels=sources, rotation=20, ha="right")
    ax.set_xlabel("held-out source")
    ax.set_ylabel("macro recall")
    ax.set_title("leave-one-source-out: trained without the source, tested on all of it")
    if sources and models:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no source held out (see external.md)", ha="center", va="center", transform=ax.transAxes)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path, dpi=120, bbox_inches="tight")
