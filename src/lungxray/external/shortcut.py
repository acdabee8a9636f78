"""The shortcut check: can a model tell an image's *source* from its pixels, and would the source give its label away?

Merged chest X-ray sets often hold one class from one hospital only; a classifier can then score well by recognising
the source (its padding, text markers, exposure) instead of the disease. Two measures, over the preprocessed arrays:

* **Source probe**: a small model (``shortcut.model``, default ``cnn5``, from scratch) learns the source of each
  train image (downsampled to ``shortcut.image_size``, never upsampled; the train split's own mean/std normalise it)
  and is scored on val: accuracy with a percentile bootstrap interval over the split units
  (:func:`lungxray.evaluate.metrics.compute_metrics`), per-source recall, against two chance levels: the majority-source
  rate (the val share of its most common source: what a constant guess scores at best) and 1/k (k sources). A source
  with no train image cannot be predicted: its recall is 0.
* **Label concentration**: the label x source table of the kept images of train + val, and Cramer's V of it
  (``sqrt(chi2 / (n * (min(r, c) - 1)))``, 0 = the label mix is the same in every source, 1 = the source decides the
  label); ``None`` with fewer than two sources or labels. Sources whose images all carry one label are listed: their
  source alone predicts that label.

The warning fires when the probe's interval lower bound beats the majority-source rate by ``shortcut.margin`` or more
**and** Cramer's V is at least ``shortcut.cramers_v``: the source is visible in the pixels and it predicts the label,
so in-source test figures may be inflated by the shortcut. The compare stage puts it at the top of the leaderboard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn

from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.core.plots import pyplot, save_png
from lungxray.evaluate.metrics import EvaluateParams, compute_metrics

log = logging.getLogger(__name__)

PROBE_SPLITS = ("train", "val")  # the probe learns on train and is scored on val; the labels are counted on both


class ShortcutParams(Strict):
    """The ``shortcut`` section: the source probe and the thresholds of the warning."""

    enabled: bool = Field(True, description="run the check (false: the report says it was skipped, no warning)")
    model: str = Field("cnn5", description="architecture of the source probe (a row of the models table), from scratch")
    epochs: int = Field(2, ge=1, description="training epochs of the probe")
    image_size: int = Field(32, ge=8, le=1024, description="side the processed arrays are downsampled to for the "
                                                           "probe (never upsampled)")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    seed: int = Field(42, description="seed of the weights and batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="CUDA when present (auto), else the CPU")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples (split units) of the probe's val accuracy")
    ci: float = Field(0.95, gt=0, lt=1, description="confidence level of the interval")
    margin: float = Field(0.1, ge=0, le=1, description="warning: the interval's lower bound beats the majority-source "
                                                       "rate by at least this")
    cramers_v: float = Field(0.3, ge=0, le=1, description="warning: and Cramer's V of label x source is at least this")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from lungxray.models.architectures import MODEL_NAMES

        if v not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r}; valid: {', '.join(MODEL_NAMES)}")
        return v


# ---------------------------------------------------------------------------------------------------------------------
# label concentration


def cramers_v(table: np.ndarray) -> float | None:
    """Cramer's V of a contingency table (rows x columns of counts); rows and columns without a count are left out.
    ``None`` when fewer than two rows or columns remain."""
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0]
    if min(t.shape) < 2:
        return None
    n = t.sum()
    expected = np.outer(t.sum(1), t.sum(0)) / n
    chi2 = float(((t - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(t.shape) - 1))))


def label_distribution(index: pd.DataFrame) -> dict[str, Any]:
    """Counts per source and label of the index rows of train + val, Cramer's V, and the one-label sources."""
    rows = index[index.split.isin(PROBE_SPLITS)]
    counts = pd.crosstab(rows.source, rows.label)
    single = {str(s): str(r[r > 0].index[0]) for s, r in counts.iterrows() if (r > 0).sum() == 1}
    return {"counts": {str(s): {str(k): int(v) for k, v in r.items() if v} for s, r in counts.iterrows()},
            "images": int(len(rows)), "cramers_v": cramers_v(counts.to_numpy()), "single_class_sources": single}


# ---------------------------------------------------------------------------------------------------------------------
# source probe


def downsample(images: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """uint8 ``(N, S, S)`` -> ``(N, size, size)`` by area averaging (chunked: a memmap is never read whole); arrays
    no larger than ``size`` come back as they are."""
    if images.shape[1] <= size:
        return np.asarray(images, dtype=np.uint8)
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[i:i + chunk], dtype=np.float32)).unsqueeze(1)
        out[i:i + chunk] = nn.functional.interpolate(x, size=(size, size), mode="area").round().clamp(0, 255)[:, 0]
    return out


def train_probe(x: np.ndarray, y: np.ndarray, k: int, params: ShortcutParams) -> tuple[nn.Module, dict]:
    """The probe, trained on ``x`` (uint8 ``(N, S, S)``) to predict ``y`` (source codes 0..k-1) with the project's
    training pieces (batches, epoch loop, input normalisation). Returns the model and its normalisation."""
    from lungxray.core.device import resolve_device
    from lungxray.models.architectures import create_model
    from lungxray.train.loop import ArrayBatches, Feed, class_weights, run_epoch, seed_everything

    device = resolve_device(params.device)
    seed_everything(params.seed)
    model = create_model(params.model, num_classes=k, pretrained=False).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, k).to(device))  # a rare source counts as much as a big one
    norm = {"mean": float(x.mean()) / 255.0, "std": max(float(x.std()) / 255.0, 1e-6)}
    for epoch in range(1, params.epochs + 1):
        g = torch.Generator().manual_seed(params.seed + epoch)
        loss, acc, _ = run_epoch(model, ArrayBatches(x, y, params.batch_size, "shuffle", g), loss_fn,
                                 Feed(device, norm["mean"], norm["std"]), opt)
        log.info("source probe epoch %d/%d: train loss %.4f acc %.3f", epoch, params.epochs, loss, acc)
    return model.cpu().eval(), norm


def probe_sources(processed: Path, index: pd.DataFrame, params: ShortcutParams) -> dict[str, Any]:
    """Train the probe on the train split's sources, score it on val (see the module docstring)."""
    from lungxray.data.preprocess import load_split
    from lungxray.models.inference import predict_proba

    sources = sorted(index[index.split.isin(PROBE_SPLITS)].source.astype(str).unique())
    codes = {s: i for i, s in enumerate(sources)}
    data = {}
    for split in PROBE_SPLITS:
        images, _ = load_split(processed, split)
        rows = index[index.split == split].sort_values("row")
        data[split] = (downsample(images, params.image_size), rows.source.astype(str).map(codes).to_numpy(np.int64),
                       rows["unit"].astype(str).to_numpy() if "unit" in rows else None)
    (x_tr, y_tr, _), (x_va, y_va, units) = data["train"], data["val"]
    if len(y_tr) == 0 or len(y_va) == 0:
        raise LungxrayError("the shortcut check needs images in both train and val: check split.ratios")
    model, norm = train_probe(x_tr, y_tr, len(sources), params)
    probs = predict_proba(model, x_va, norm["mean"], norm["std"], batch_size=params.batch_size)
    m = compute_metrics(y_va, probs, sources, EvaluateParams(bootstrap=params.bootstrap, ci=params.ci,
                                                             seed=params.seed), units)
    val_share = np.bincount(y_va, minlength=len(sources)) / len(y_va)
    return {"sources": sources, "train_images": int(len(y_tr)), "val_images": int(len(y_va)),
            "image_size": int(x_tr.shape[1]), "model": params.model, "epochs": params.epochs,
            "accuracy": m["accuracy"], "accuracy_ci_low": m["accuracy_ci_low"],
            "accuracy_ci_high": m["accuracy_ci_high"], "ci": params.ci, "bootstrap": params.bootstrap,
            "majority_rate": float(val_share.max()), "majority_source": sources[int(val_share.argmax())],
            "uniform_rate": 1.0 / len(sources),
            "per_source": {s: {"recall": m["per_class"][s]["sensitivity"], "val_images": int(m["per_class"][s]["support"]),
                               "train_images": int((y_tr == codes[s]).sum())} for s in sources}}


# ---------------------------------------------------------------------------------------------------------------------
# the check


def shortcut_warning(probe: dict | None, labels: dict, params: ShortcutParams) -> dict[str, Any]:
    """Whether the warning fires (both conditions of the module docstring), with the figures that decided it."""
    low = (probe or {}).get("accuracy_ci_low")
    excess = None if low is None else low - probe["majority_rate"]
    v = labels["cramers_v"]
    predictable = excess is not None and excess >= params.margin
    concentrated = v is not None and v >= params.cramers_v
    return {"fires": bool(predictable and concentrated), "source_predictable": bool(predictable),
            "labels_concentrated": bool(concentrated), "ci_low_over_majority": excess, "margin": params.margin,
            "cramers_v": v, "cramers_v_threshold": params.cramers_v}


def run_shortcut(processed: Path, params: ShortcutParams) -> dict[str, Any]:
    """The shortcut report of a processed data set (``index.csv`` with its ``source`` column, the split arrays)."""
    processed = Path(processed)
    if not (processed / "index.csv").exists():
        raise LungxrayError(f"{processed / 'index.csv'} is missing: run the preprocess stage first (dvc repro "
                            f"preprocess)")
    index = pd.read_csv(processed / "index.csv", keep_default_na=False, dtype={"id": str, "unit": str})
    labels = label_distribution(index)
    n_sources = len(labels["counts"])
    skipped = None if params.enabled else "shortcut.enabled is false"
    if skipped is None and n_sources < 2:
        skipped = f"{n_sources} source in train + val: there is no source to tell apart"
    probe = None if skipped else probe_sources(processed, index, params)
    report = {"skipped": skipped, "probe": probe, "labels": labels,
              "warning": shortcut_warning(probe, labels, params), "params": params.model_dump(mode="json")}
    report["warning"]["message"] = warning_text(report)  # what the leaderboard quotes
    return report


# ---------------------------------------------------------------------------------------------------------------------
# report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def warning_text(report: dict) -> str:
    """One paragraph with the figures behind the warning (empty when it does not fire); the leaderboard quotes it."""
    w, p, lab = report["warning"], report.get("probe"), report["labels"]
    if not w["fires"]:
        return ""
    single = ", ".join(f"{s} (only {c})" for s, c in sorted(lab["single_class_sources"].items()))
    return (f"**Shortcut warning**: a {p['model']} probe tells the source of a val image with accuracy "
            f"{_pct(p['accuracy'])} [{_pct(p['accuracy_ci_low'])}, {_pct(p['accuracy_ci_high'])}] against a "
            f"majority-source rate of {_pct(p['majority_rate'])} (1/k = {_pct(p['uniform_rate'])}, k = "
            f"{len(p['sources'])}), and the labels are concentrated by source (Cramer's V {w['cramers_v']:.2f} >= "
            f"{w['cramers_v_threshold']:.2f}). A model can score by recognising the source instead of the disease: "
            f"the in-source figures may be optimistic." + (f" One-label sources: {single}." if single else ""))


def shortcut_markdown(report: dict) -> str:
    """reports/shortcut.md: the verdict, the probe against chance, per-source recall, the label x source table."""
    lines = ["# Shortcut check", ""]
    if report["skipped"]:
        lines += [f"Source probe skipped: {report['skipped']}.", ""]
    lines += [warning_text(report) or "No shortcut warning: " + _no_warning_reason(report), ""]
    p = report["probe"]
    if p:
        lines += [f"Source probe ({p['model']}, {p['epochs']} epochs, {p['image_size']} px, {p['train_images']} train "
                  f"/ {p['val_images']} val images): val accuracy {_pct(p['accuracy'])} "
                  f"[{_pct(p['accuracy_ci_low'])}, {_pct(p['accuracy_ci_high'])}] ({100 * p['ci']:g}% CI, split "
                  f"units); chance: majority source {_pct(p['majority_rate'])} ({p['majority_source']}), 1/k "
                  f"{_pct(p['uniform_rate'])}.", "", "| source | train images | val images | recall |",
                  "|:---|---:|---:|---:|"]
        lines += [f"| {s} | {r['train_images']} | {r['val_images']} | {_pct(r['recall'])} |"
                  for s, r in p["per_source"].items()]
        lines.append("")
    lab = report["labels"]
    classes = sorted({c for r in lab["counts"].values() for c in r})
    v = lab["cramers_v"]
    lines += [f"Labels per source (kept images of train + val, {lab['images']} images); Cramer's V "
              f"{'-' if v is None else f'{v:.3f}'}:", "", "| source | " + " | ".join(classes) + " |",
              "|:---|" + "---:|" * len(classes)]
    lines += [f"| {s} | " + " | ".join(str(r.get(c, 0)) for c in classes) + " |" for s, r in lab["counts"].items()]
    if lab["single_class_sources"]:
        lines += ["", "Sources with one label only (the source alone predicts it): " + ", ".join(
            f"{s} ({c})" for s, c in sorted(lab["single_class_sources"].items())) + "."]
    return "\n".join(lines) + "\n"


def _no_warning_reason(report: dict) -> str:
    w = report["warning"]
    if report["skipped"]:
        return "the probe did not run."
    parts = [("the source is predictable" if w["source_predictable"] else "the source is not predictable beyond "
              f"the majority rate by {w['margin']:g}"),
             ("labels are concentrated by source" if w["labels_concentrated"] else "labels are not concentrated by "
              f"source (Cramer's V below {w['cramers_v_threshold']:g})")]
    return "; ".join(parts) + "."


def plot_shortcut(report: dict, path: str | Path) -> Path:
    """Left: per-source recall of the probe with its accuracy and both chance levels; right: label mix per source."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    p = report["probe"]
    if p:
        names = list(p["per_source"])
        ax1.bar(range(len(names)), [r["recall"] or 0.0 for r in p["per_source"].values()], color="tab:blue")
        ax1.axhline(p["accuracy"], color="tab:red", label=f"probe accuracy {_pct(p['accuracy'])}")
        ax1.axhspan(p["accuracy_ci_low"] or p["accuracy"], p["accuracy_ci_high"] or p["accuracy"], color="tab:red",
                    alpha=0.15)
        ax1.axhline(p["majority_rate"], color="k", ls="--", label=f"majority source {_pct(p['majority_rate'])}")
        ax1.axhline(p["uniform_rate"], color="grey", ls=":", label=f"1/k {_pct(p['uniform_rate'])}")
        ax1.set_xticks(range(len(names)), labels=names, rotation=30, ha="right", fontsize=8)
        ax1.set_ylim(0, 1.02)
        ax1.legend(fontsize=8)
    ax1.set_title("source probe: val recall per source" if p else f"source probe skipped: {report['skipped']}")
    counts = pd.DataFrame(report["labels"]["counts"]).T.fillna(0)
    if not counts.empty:
        share = counts.div(counts.sum(1), axis=0)
        share.plot.bar(stacked=True, ax=ax2, legend=True, rot=30, fontsize=8)
        ax2.legend(fontsize=8)
    v = report["labels"]["cramers_v"]
    ax2.set_title(f"label share per source (Cramer's V {'-' if v is None else f'{v:.2f}'})")
    fig.suptitle("shortcut check: WARNING" if report["warning"]["fires"] else "shortcut check")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
