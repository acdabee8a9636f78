"""Figures the report computes itself from the champion's per-image predictions (``predictions_<split>.csv``), where
the evaluate stage stores the numbers but not the view:

* :func:`per_class_intervals`: percentile intervals of each class's sensitivity, specificity, PPV, NPV and one-vs-rest
  AUC, from the same cluster bootstrap as eval.json's macro intervals (``evaluate.bootstrap`` resamples of the split
  units, ``evaluate.ci``, ``evaluate.seed``: :mod:`lungxray.evaluate.metrics.bootstrap`); the point values are
  eval.json's own.
* :func:`reliability_svg`: the top-label reliability diagram before and after temperature scaling. The stored
  probabilities are ``softmax(z / T)``; ``softmax(T * log p)`` gives back ``softmax(z)`` exactly (the constant of the
  log-softmax cancels), so "before" needs no model, only the temperature in eval.json.
"""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd

from lungxray.evaluate.metrics import reliability_data
from lungxray.evaluate.metrics.bootstrap import percentile_interval, resample_weights
from lungxray.evaluate.metrics.primitives import grouped_auc

__all__ = ["prediction_units", "per_class_intervals", "uncalibrated", "reliability_svg", "CLASS_STATISTICS"]

CLASS_STATISTICS = ("sensitivity", "specificity", "ppv", "npv", "auc")


def prediction_units(df: pd.DataFrame) -> list[str]:
    """The split unit of each row of a predictions table (its id where the table has no unit column)."""
    return df["unit" if "unit" in df.columns else "id"].astype(str).tolist()


def _class_statistics(y: np.ndarray, p: np.ndarray, w: np.ndarray, k: int) -> dict[str, np.ndarray]:
    pos, pred = y == k, p.argmax(axis=1) == k
    tp, fn = w @ (pos & pred), w @ (pos & ~pred)
    fp, tn = w @ (~pos & pred), w @ (~pos & ~pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
               "npv": tn / (tn + fn)}
    out["auc"] = grouped_auc(p[:, k], pos, w) if pos.any() and not pos.all() else np.full(w.shape[0], np.nan)
    return out


def per_class_intervals(y: np.ndarray, p: np.ndarray, classes: list[str], units: list[str], resamples: int,
                        ci: float, seed: int) -> dict[str, dict[str, dict]]:
    """``{class: {statistic: {"low", "high"}}}`` over ``resamples`` cluster-bootstrap resamples of ``units``."""
    n = y.shape[0]
    if resamples <= 0 or n == 0:
        return {c: {s: {"low": None, "high": None} for s in CLASS_STATISTICS} for c in classes}
    parts: dict[int, list[dict]] = {k: [] for k in range(len(classes))}
    for w in resample_weights(units, n, resamples, seed):  # the resamples of eval.json's own intervals
        for k in parts:
            parts[k].append(_class_statistics(y, p, w, k))
    return {c: {s: percentile_interval(np.concatenate([d[s] for d in parts[k]]), ci) for s in CLASS_STATISTICS}
            for k, c in enumerate(classes)}


def uncalibrated(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(z)`` from the stored ``softmax(z / T)`` (see the module docstring)."""
    logits = temperature * np.log(np.clip(p, 1e-300, 1.0))
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _panel(rel: dict, x0: float, title: str) -> str:
    """One reliability panel (200 x 200 plot area at ``x0``): bars of accuracy per confidence bin, the diagonal."""
    size, top = 200.0, 30.0
    parts = [f'<text x="{x0 + size / 2}" y="18" text-anchor="middle" font-size="12">{escape(title)}</text>',
             f'<rect x="{x0}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#888"/>',
             f'<line x1="{x0}" y1="{top + size}" x2="{x0 + size}" y2="{top}" stroke="#999" stroke-dasharray="4 3"/>']
    for b in rel["bins"]:
        if b["accuracy"] is None:
            continue
        x, w = x0 + b["lower"] * size, (b["upper"] - b["lower"]) * size
        h = b["accuracy"] * size
        parts.append(f'<rect x="{x:.1f}" y="{top + size - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
                     f'fill="#4a7fb5" fill-opacity="0.75" stroke="#fff" stroke-width="0.5">'
                     f'<title>confidence {b["lower"]:.2f}-{b["upper"]:.2f}: {b["count"]} images, accuracy '
                     f'{b["accuracy"]:.3f}</title></rect>')
    ece = rel.get("ece")
    parts.append(f'<text x="{x0 + 6}" y="{top + 16}" font-size="11">ECE {ece:.3f}</text>' if ece is not None else "")
    parts += [f'<text x="{x0 + size / 2}" y="{top + size + 28}" text-anchor="middle" font-size="11">confidence '
              f'(top class)</text>', f'<text x="{x0}" y="{top + size + 14}" font-size="10">0</text>',
              f'<text x="{x0 + size - 6}" y="{top + size + 14}" font-size="10">1</text>']
    return "".join(parts)


def reliability_svg(y: np.ndarray, p: np.ndarray, temperature: float, bins: int) -> str:
    """Inline SVG: the reliability diagram before (``softmax(z)``) and after (``softmax(z / T)``) scaling."""
    before = reliability_data(y, uncalibrated(p, temperature), bins)
    after = reliability_data(y, p, bins)
    body = (_panel(before, 40, "before temperature scaling (T = 1)")
            + _panel(after, 300, f"after (T = {temperature:.3f}, as served)"))
    axis = ('<text x="14" y="130" font-size="11" transform="rotate(-90 14 130)" text-anchor="middle">accuracy'
            '</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="540" height="270" viewBox="0 0 540 270" role="img" '
            f'aria-label="reliability diagram before and after temperature scaling" font-family="sans-serif">'
            f"{axis}{body}</svg>")
