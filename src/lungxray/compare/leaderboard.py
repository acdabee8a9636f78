"""The compare stage: one leaderboard of every trained architecture (rows from each model's train.json and eval.json),
in the promotion rule's order, as Markdown and as a bar chart with the bootstrap intervals.

Beside each model's figures stands the no-skill line of the split they are reported on (test; val when the test
split is held back): the majority class's share and the model's lift over it with its interval
(:mod:`lungxray.evaluate.metrics.no_skill`), or "no better than always answering <class>" when the accuracy
interval contains that share."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lungxray.compare.promote import PromotionParams, rank
from lungxray.core.errors import LungxrayError
from lungxray.core.numbers import fmt_interval
from lungxray.core.plots import pyplot as _pyplot
from lungxray.core.plots import save_png
from lungxray.evaluate.metrics.no_skill import LIFT_KEYS, no_skill_note


def leaderboard_rows(models: list[str], metrics_root: Path, external: dict[str, float] | None = None) -> list[dict]:
    """One row per model from its train.json and eval.json; ``external`` (:func:`external_figures`) adds each one's
    ``external_macro_recall`` (None: not run)."""
    rows = []
    for name in models:
        d = Path(metrics_root) / name
        if not (d / "eval.json").exists() or not (d / "train.json").exists():
            raise LungxrayError(f"no metrics for {name} in {d}: run `dvc repro` (train@{name}, evaluate@{name})")
        e = json.loads((d / "eval.json").read_text())
        t = json.loads((d / "train.json").read_text())
        rows.append({
            "model": name,
            **{f"{split}_{k}{s}": (e[split] or {}).get(f"{k}{s}") for split in ("test", "val")
               for k in ("macro_recall", "accuracy", "macro_auc") for s in ("", "_ci_low", "_ci_high")},
            "trainable_parameters": t["trainable_parameters"], "seconds_per_epoch": t["seconds_per_epoch"],
            "epochs_to_converge": t["epochs_to_converge"], "images_per_s": e["throughput"]["images_per_s"],
            "test_set": e["test_set"], "val_set": e.get("val_set"), "mlflow_run_id": t.get("mlflow_run_id"),
            "external_macro_recall": (external or {}).get(name),
            "ensemble_of": ", ".join(e["members"]) if e.get("members") else None,  # lungxray.ensemble
            **no_skill_columns(e),
        })
    return rows


def no_skill_columns(evaluation: dict) -> dict[str, Any]:
    """The no-skill line of one eval.json: ``<split>_majority_class``, ``<split>_majority_share`` and the lift keys per
    split, and ``no_skill``: that line in words on the split the figures are reported on (test, else val), None for
    an eval.json written before it."""
    out: dict[str, Any] = {}
    for split in ("test", "val"):
        m = evaluation.get(split) or {}
        base = m.get("no_skill") or {}
        out |= {f"{split}_majority_class": base.get("majority_class"),
                f"{split}_majority_share": base.get("majority_share"),
                **{f"{split}_{k}": m.get(k) for k in LIFT_KEYS}}
    shown = "test" if evaluation.get("test") else "val"
    note = no_skill_note(evaluation.get(shown))
    out["no_skill"] = f"{shown}: {note}" if note else None
    return out


def external_figures(path: Path) -> dict[str, float]:
    """The external stage's figure per architecture (``reports/external.json``): its mean macro recall over the
    sources held out of its training (leave-one-source-out); {} when the stage has not run."""
    path = Path(path)
    if not path.exists():
        return {}
    summary = json.loads(path.read_text()).get("summary") or {}
    return {m: s["mean_macro_recall"] for m, s in summary.items() if s.get("mean_macro_recall") is not None}


LEADERBOARD_COLUMNS = [
    "rank", "model", "val_macro_recall", "val_macro_recall_ci_low", "val_macro_recall_ci_high", "test_macro_recall",
    "test_macro_recall_ci_low", "test_macro_recall_ci_high", "test_accuracy", "test_accuracy_ci_low",
    "test_accuracy_ci_high", "test_macro_auc", "test_macro_auc_ci_low", "test_macro_auc_ci_high",
    "external_macro_recall", "trainable_parameters", "seconds_per_epoch", "epochs_to_converge", "images_per_s",
]
REPORTED_TEST = ("test_macro_recall", "test_accuracy", "test_macro_auc")


def leaderboard(rows: list[dict[str, Any]], promotion: PromotionParams | None = None) -> tuple[pd.DataFrame, str]:
    """The comparison table in the promotion rule's order, and its markdown (a note on the selection, then the table).

    Rows carry (missing -> empty) the selection metric (``promotion.metric``, default ``val_macro_recall``) and its
    ``_ci_low`` / ``_ci_high``, the reported ``test_macro_recall``, ``test_accuracy``, ``test_macro_auc`` (each with
    its interval), ``trainable_parameters, seconds_per_epoch, epochs_to_converge, images_per_s``; other keys are kept
    as extra columns. Order: :func:`lungxray.compare.promote.rank` with ``promotion`` (a
    :class:`lungxray.compare.promote.PromotionParams`: metric, direction, tie breaker, tie tolerance), so the first row
    is the model the promotion step picks.
    """
    pp = promotion or PromotionParams()
    ordered = rank([dict(r) for r in rows], pp)
    for i, r in enumerate(ordered, 1):
        r["rank"] = i
    first = ["rank", "model", pp.metric, f"{pp.metric}_ci_low", f"{pp.metric}_ci_high"]
    columns = first + [c for c in LEADERBOARD_COLUMNS if c not in first]
    extra = sorted({k for r in ordered for k in r} - set(columns))
    df = pd.DataFrame(ordered, columns=columns + extra)
    return df, leaderboard_note(pp) + "\n" + _markdown(df, pp.metric)


def shortcut_block(report: dict | None) -> str:
    """The shortcut check's warning (``reports/shortcut.json``, see :mod:`lungxray.external.shortcut`) as a block for
    the top of the leaderboard, with its figures; empty when there is no report or the warning does not fire."""
    if not report or not report.get("warning", {}).get("fires"):
        return ""
    return f"> [!WARNING]\n> {report['warning']['message']} Details: `reports/shortcut.md`.\n\n"


def leaderboard_note(promotion: PromotionParams) -> str:
    """What chose the order (metric, direction, tie breaker) and what the test figures are for."""
    p = promotion
    note = (f"Ranked by `{p.metric}` ({'higher' if p.higher_is_better else 'lower'} is better); values within "
            f"{p.tie_tolerance:g} tie and ties go to fewer `{p.tie_breaker}`, then the name. Row 1 is the model the "
            f"register stage considers for champion. External macro recall: the architecture trained without a "
            f"source and tested on all of it, averaged over the held-out sources (`reports/external.md`; `-`: not "
            f"run). No-skill line: the share of the majority class on the same images (what always answering it "
            f"scores) and the model's lift over it [95% CI]; flagged when the accuracy interval contains that share.")
    if p.metric.startswith("test_"):
        return note + (" Selection uses a **test** metric: the test figures below are then optimistic (the best of "
                       "several noisy scores on the data that reports them).\n")
    return note + (" Test figures are reported once, for information: they were not used for selection.\n")


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
            + ["no-skill line", "external macro recall", "trainable params", "s / epoch", "epochs", "images / s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:", ":---"] + ["---:"] * (len(head) - 2)) + "|"]

    def g(r, k):
        v = r.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    for r in df.to_dict("records"):
        model = str(r["model"]) + (f" (mean of {r['ensemble_of']})" if g(r, "ensemble_of") else "")
        cells = ([str(r["rank"]), model]
                 + [fmt_interval(g(r, m), g(r, f"{m}_ci_low"), g(r, f"{m}_ci_high"), 4) for m in scored]
                 + [_no_skill_cell(r)]
                 + [fmt_interval(g(r, "external_macro_recall"), None, None, 4)]
                 + [_fmt_num(g(r, "trainable_parameters"), 0), _fmt_num(g(r, "seconds_per_epoch"), 1),
                    _fmt_num(g(r, "epochs_to_converge"), 0), _fmt_num(g(r, "images_per_s"), 1)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _no_skill_cell(r: dict) -> str:
    note = r.get("no_skill")
    if not isinstance(note, str):
        return "-"
    flagged = any(r.get(f"{s}_no_better_than_majority") is True for s in ("test", "val") if note.startswith(s))
    return f"**{note}**" if flagged else note


def plot_leaderboard(df: pd.DataFrame, path: str | os.PathLike, metrics: Sequence[str] | None = None,
                     title: str | None = None, promotion: PromotionParams | None = None) -> Path:
    """Grouped bars per model (leaderboard order) with the bootstrap intervals as error bars.

    ``metrics`` default: the selection metric of ``promotion`` (default ``val_macro_recall``), then the reported test
    macro recall, accuracy and macro AUC.
    """
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
    return save_png(fig, path, dpi=120, bbox_inches="tight")
