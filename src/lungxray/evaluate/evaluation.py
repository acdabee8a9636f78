"""The evaluate stage: one trained model on the test and val splits (metrics with bootstrap intervals from
:mod:`lungxray.evaluate.metrics`, per-source breakdown, per-image predictions, plots, inference speed), logged into the
model's training run (:mod:`lungxray.core.tracking`).

Every ``eval.json`` records what it was computed from (``inputs``: the processed data's version, the model file's
SHA-256 and the evaluate settings' fingerprint) and on which images (``val_set``, ``test_set``: fingerprints of ids and
labels), so that a metrics file left over from other inputs is recognised (:func:`stale_evaluations`) and never
compared as if it were current.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.core.io import read_json, sha256_file, write_csv, write_json
from lungxray.core.plots import pyplot as _pyplot
from lungxray.core.plots import save_png
from lungxray.core.tracking import MlflowParams, log_evaluation
from lungxray.data.preprocess import load_split
from lungxray.evaluate import metrics
from lungxray.evaluate.extras import evaluation_markdown, extras
from lungxray.evaluate.gradcam import gradcam_grid
from lungxray.evaluate.metrics import EvaluateParams, ovr_auc, roc_points
from lungxray.evaluate.metrics.primitives import check_inputs
from lungxray.models.checkpoint import data_version, fingerprint
from lungxray.models.inference import measure_throughput
from lungxray.models.trained import TrainedModel, load_trained_model


def fingerprint_images(ids, labels) -> str:
    """Identifies a set of images with their labels (order does not matter)."""
    pairs = sorted(zip(map(str, ids), map(str, labels)))
    return hashlib.sha256("\n".join(f"{i}\t{l}" for i, l in pairs).encode()).hexdigest()[:16]


def fingerprint_split(processed: Path, split: str) -> str:
    """Identifies one split (ids and labels), so that two models are compared on the same images only."""
    index = pd.read_csv(Path(processed) / "index.csv", keep_default_na=False, dtype=str)
    part = index[index.split == split]
    return fingerprint_images(part.id, part.label)


def evaluation_inputs(processed: Path, model_path: Path, params: EvaluateParams) -> dict[str, str]:
    """What an evaluation is computed from: data version, model file hash, settings (recorded in eval.json)."""
    return {"data_version": data_version(Path(processed)), "model_sha256": sha256_file(model_path),
            "evaluate_params": fingerprint(params.model_dump())}


def _short(m: dict) -> dict:
    keys = ("n_samples", "accuracy", "macro_recall", "macro_precision", "macro_f1", "macro_auc", "ece")
    return {k: m.get(k) for k in keys}


def _check_model(name: str, processed: Path, model: TrainedModel) -> dict:
    """The processed data's stats.json, after checking that the model was trained on this data."""
    current = data_version(processed)
    if model.data_version != current:
        raise LungxrayError(
            f"{model.source} is stale: it was trained on data version {model.data_version}, the preprocessed data is "
            f"now {current}. Rerun `dvc repro` so that train@{name} runs again before evaluating.")
    stats = json.loads((processed / "stats.json").read_text())
    if stats["classes"] != model.classes:
        raise LungxrayError(f"{model.source} predicts {model.classes} but the data has classes {stats['classes']}")
    return stats


def split_index(processed: Path, split: str) -> pd.DataFrame:
    """The index rows of one split in array order; they must carry the split unit (dedupe group and patient)."""
    index = pd.read_csv(processed / "index.csv", keep_default_na=False, dtype={"id": str, "unit": str, "source": str})
    if "unit" not in index.columns:
        raise LungxrayError(f"{processed / 'index.csv'} has no unit column (written by an older preprocess): rerun "
                            f"`dvc repro` so that preprocess writes it")
    return index[index.split == split].sort_values("row").reset_index(drop=True)


def score_split(y: np.ndarray, probs: np.ndarray, part: pd.DataFrame, classes: list[str],
                params: EvaluateParams) -> tuple[dict, dict]:
    """The full metrics of one split and their summary with the per-source breakdown (``part``: its index rows,
    with ``unit`` and ``source``, in the order of ``y``); a single model and the ensemble are scored alike."""
    m = metrics.compute_metrics(y, probs, classes, params, units=part.unit.tolist())
    m = metrics.with_no_skill(m, y, probs, classes, params, part.unit.tolist())  # the constant classifiers beside it
    by_source = metrics.metrics_by_source(y, probs, part.source.astype(str).tolist(), classes, params,
                                          units=part.unit.tolist())
    return m, {**metrics.summary(m), "by_source": {s: _short(v) for s, v in by_source.items()}}


def evaluate_model(name: str, processed: Path, model_path: Path, metrics_dir: Path, reports_dir: Path,
                   params: EvaluateParams, train_metrics: dict | None = None,
                   mlflow_params: MlflowParams | None = None) -> dict:
    """Evaluate one trained model on the test and val splits; write metrics, per-image predictions, plots and plot
    data (``predictions_<split>.csv``: id, unit, label, one probability per class).

    The probabilities are the model's as stored and served: ``softmax(logits / T)`` with the temperature fitted on val
    at the end of training (``T = 1`` for an uncalibrated model); eval.json adds the ECE before and after, the
    test-time augmentation figures and the operating points (:mod:`lungxray.evaluate.extras`)."""
    processed, metrics_dir, reports_dir = Path(processed), Path(metrics_dir), Path(reports_dir)
    model = load_trained_model(model_path, device="auto")  # the same command on a GPU machine or a CPU
    stats = _check_model(name, processed, model)
    out: dict = {"model": name, "classes": model.classes, "test_set": fingerprint_split(processed, "test"),
                 "val_set": fingerprint_split(processed, "val"),
                 "inputs": evaluation_inputs(processed, model_path, params)}
    results, evaluated, warnings = _score_splits(model, processed, metrics_dir, params, out)
    out.update(extras(model, processed, dict(reversed(evaluated.items())), out, params))
    official = _official_test(model, processed, params, metrics_dir)
    if official is not None:
        out[schema.OFFICIAL_TEST_SPLIT] = official
    write_plots(name, results, model.classes, metrics_dir, reports_dir, out)
    (reports_dir / "evaluation.md").write_text(evaluation_markdown(name, out))
    _write_gradcam(name, model, processed, out["plots_split"], results[out["plots_split"]], reports_dir)
    out["warnings"] = warnings
    out["throughput"] = measure_throughput(model.network, stats["image_size"], batch_size=params.batch_size,
                                           device=model.device, n_batches=params.latency_batches,
                                           max_seconds=params.latency_seconds)
    model.to("cpu")
    for split in schema.EVAL_SPLITS:
        write_json(schema.headline_file(metrics_dir, split), metrics.headline(out[split]))
    write_json(metrics_dir / "eval.json", out)  # last: its presence means the evaluation finished
    run_id = (train_metrics or {}).get("mlflow_run_id")
    if run_id:
        log_evaluation(run_id, out, results, metrics_dir, reports_dir, mlflow_params)
    return out


def _score_splits(model: TrainedModel, processed: Path, metrics_dir: Path, params: EvaluateParams,
                  out: dict) -> tuple[dict, dict, list[str]]:
    """Score the model on each evaluated split (into ``out[split]``) and write its per-image predictions. Returns
    ``results`` (split -> (labels, probabilities, metrics): the plots), ``evaluated`` (split -> (labels, logits,
    units): calibration, TTA, operating points) and the warnings."""
    classes, warnings = model.classes, []
    results: dict[str, tuple] = {}
    evaluated: dict[str, tuple] = {}
    for split in schema.EVAL_SPLITS:
        x, y = load_split(processed, split)
        part = split_index(processed, split)
        if len(y) == 0:
            if split == "test" and params.allow_empty_test:
                out["test"] = None
                write_csv(metrics_dir / "predictions_test.csv",
                          metrics.predictions_table([], [], y, np.zeros((0, len(classes))), classes))
                warnings.append("the test split is empty (held back): only validation metrics are reported")
                continue
            raise LungxrayError(f"the {split} split is empty: nothing to evaluate (check split.ratios, or set "
                                f"evaluate.allow_empty_test when the test split is held back on purpose)")
        absent = [c for i, c in enumerate(classes) if not (y == i).any()]
        if absent:
            warnings.append(f"{split}: no image of class(es) {absent}: their sensitivity and AUC are undefined "
                            f"(reported as null); macro averages use the classes present")
        logits = model.logits(x, batch_size=params.batch_size)
        probs = model.calibrated(logits)
        evaluated[split] = (y, logits, part.unit.tolist())
        m, out[split] = score_split(y, probs, part, classes, params)
        write_csv(metrics_dir / f"predictions_{split}.csv",
                  metrics.predictions_table(part.id.tolist(), part.unit.tolist(), y, probs, classes))
        results[split] = (y, probs, m)
    return results, evaluated, warnings


def _official_test(model: TrainedModel, processed: Path, params: EvaluateParams, metrics_dir: Path) -> dict | None:
    """Benchmark mode: the figures on the sources' whole official test set (copies within it included), the row
    comparable with published tables; reported beside the deduplicated test split, never used for selection. Its
    per-image probabilities go to ``predictions_test_official.csv`` (the ensemble averages them), an empty table
    outside benchmark mode so that the DVC output always exists."""
    part, classes = split_index(processed, schema.OFFICIAL_TEST_SPLIT), model.classes
    f = metrics_dir / f"predictions_{schema.OFFICIAL_TEST_SPLIT}.csv"
    if part.empty:
        write_csv(f, metrics.predictions_table([], [], np.zeros(0, np.int64), np.zeros((0, len(classes))), classes))
        return None
    x, y = load_split(processed, schema.OFFICIAL_TEST_SPLIT)
    probs = model.proba(x, batch_size=params.batch_size)
    write_csv(f, metrics.predictions_table(part.id.tolist(), part.unit.tolist(), y, probs, classes))
    m = metrics.compute_metrics(y, probs, classes, params, units=part.unit.tolist())
    return metrics.summary(metrics.with_no_skill(m, y, probs, classes, params, part.unit.tolist()))


def write_plots(name: str, results: dict, classes: list[str], metrics_dir: Path, reports_dir: Path,
                 out: dict) -> None:
    """Plots of the test split (of val when the test split is held back), for people (PNG) and dvc plots (CSV)."""
    shown = "test" if "test" in results else "val"
    y, probs, m = results[shown]
    out["plots_split"] = shown
    reports_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(m["confusion_matrix"]["matrix"], classes, reports_dir / "confusion_matrix.png",
                             title=f"{name}: {shown}")
    plot_roc_curves(y, probs, classes, reports_dir / "roc.png", title=f"{name}: {shown} ROC (one-vs-rest)")
    plot_reliability(m["reliability"], reports_dir / "reliability.png", title=f"{name}: calibration ({shown})")
    (reports_dir / "classification_report.txt").write_text(f"{name}, {shown} split\n\n{m['classification_report']}\n")
    write_csv(metrics_dir / "roc.csv", metrics.roc_points(y, probs, classes))
    write_csv(metrics_dir / "confusion.csv", metrics.confusion_pairs(y, probs.argmax(1), classes))


def _write_gradcam(name: str, model: TrainedModel, processed: Path, split: str, result: tuple,
                   reports_dir: Path) -> None:
    """``gradcam.png``: correctly and wrongly classified images of the plotted split per class, with heat maps."""
    x, _ = load_split(processed, split)
    y, probs, _ = result
    fig = gradcam_grid(model, x, y, probs, title=f"{name}: Grad-CAM of the predicted class ({split} split)")
    save_figure(fig, reports_dir / "gradcam.png")


def stale_evaluations(models: list[str], metrics_root: Path, processed: Path, models_root: Path,
                      params: EvaluateParams) -> dict[str, str]:
    """Models whose ``eval.json`` was computed from other inputs than the current files: ``{model: what changed}``."""
    processed = Path(processed)
    if not (processed / "index.csv").exists():
        return {m: f"{processed} is missing, so nothing shows the metrics are current" for m in models}
    current = {"data_version": data_version(processed), "evaluate_params": fingerprint(params.model_dump())}
    what = {"data_version": f"{processed} changed", "model_sha256": "its model.pt changed (or is missing)",
            "evaluate_params": "the evaluate settings changed"}
    stale = {}
    for name in models:
        recorded = read_json(Path(metrics_root) / name / "eval.json").get("inputs")
        model_path = Path(models_root) / name / "model.pt"
        if not isinstance(recorded, dict):
            stale[name] = "eval.json records no inputs (written by an older lungxray)"
            continue
        now = {**current, "model_sha256": sha256_file(model_path) if model_path.exists() else None}
        changed = [what[k] for k in what if recorded.get(k) != now[k]]
        if changed:
            stale[name] = ", ".join(changed) + " since it was evaluated"
    return stale
# ---------------------------------------------------------------------------------------------------------------------
# plots


def save_figure(fig, path: str | os.PathLike) -> Path:
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
    return save_figure(fig, path)


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                    title: str | None = None) -> Path:
    """One-vs-rest ROC curves with the AUC per class in the legend."""
    plt = _pyplot()
    pts = roc_points(y_true, probs, classes)
    y, p = check_inputs(y_true, probs, classes)
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)

