"""The evaluate stage's figures beyond the plain metrics (``eval.json`` keys ``calibration``, ``tta`` and
``operating_points``, and ``reports/<model>/evaluation.md``), from the temperature and operating points stored with
the model (fitted on val at the end of training: :mod:`lungxray.models.calibration`).

* ``calibration``: per evaluated split, ECE and NLL of the raw ``softmax(logits)`` (before) and of the stored
  ``softmax(logits / T)`` (after: what the model serves and what the plain figures are computed from).
* ``tta`` (``evaluate.tta``, :mod:`lungxray.evaluate.tta`): per split, the plain figures and those of the mean
  probability over the views, side by side (accuracy, macro recall, macro AUC with their intervals, ECE).
* ``operating_points``: the stored rules, their sensitivity / specificity on each split (intervals over split units:
  :mod:`lungxray.evaluate.metrics.operating`) and the prevalence table (PPV / NPV / reweighted accuracy expected at the
  val, test and set prevalences from the val sensitivity / specificity).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lungxray.models.trained import TrainedModel

from lungxray.core.numbers import fmt, fmt_interval
from lungxray.data.preprocess import load_split
from lungxray.evaluate import metrics
from lungxray.evaluate.metrics import EvaluateParams
from lungxray.evaluate.metrics.operating import operating_point_metrics, prevalence_table
from lungxray.models.calibration import argmax_only, nll
from lungxray.models.inference import softmax_t

TTA_KEYS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_recall", "macro_recall_ci_low",
            "macro_recall_ci_high", "macro_auc", "macro_auc_ci_low", "macro_auc_ci_high", "ece", "log_loss")


def calibration_block(model: TrainedModel, evaluated: dict, params: EvaluateParams) -> dict:
    """ECE and NLL before / after the stored temperature on each evaluated split (``evaluated``: split -> (y,
    logits, units))."""
    t = model.temperature
    out = {"method": model.calibration.get("method", "none"), "temperature": t, "fitted_on": "val"}
    for split, (y, logits, _) in evaluated.items():
        out[split] = {"ece_before": metrics.expected_calibration_error(y, softmax_t(logits), params.ece_bins),
                      "ece_after": metrics.expected_calibration_error(y, model.calibrated(logits), params.ece_bins),
                      "nll_before": nll(logits, y), "nll_after": nll(logits, y, t)}
    return out


def tta_block(model: TrainedModel, processed: Path, evaluated: dict, plain: dict, params: EvaluateParams
              ) -> dict | None:
    """Plain and test-time-augmented figures of each evaluated split (None when ``evaluate.tta`` is none)."""
    from lungxray.evaluate.tta import VIEWS, tta_proba

    if params.tta == "none":
        return None
    out = {"mode": params.tta, "views": [v[0] for v in VIEWS[params.tta]]}
    for split, (y, _, units) in evaluated.items():
        x, _ = load_split(processed, split)
        probs = tta_proba(model, x, params.tta, params.batch_size)
        m = metrics.compute_metrics(y, probs, model.classes, params, units=units)
        out[split] = {"plain": {k: plain[split].get(k) for k in TTA_KEYS}, "tta": {k: m.get(k) for k in TTA_KEYS}}
    return out


def operating_points_block(model: TrainedModel, evaluated: dict, params: EvaluateParams) -> dict:
    """The stored operating points, their figures on each evaluated split and the prevalence table."""
    classes = model.classes
    ops = model.operating_points or argmax_only()
    per_split = {split: operating_point_metrics(y, model.calibrated(logits), classes, ops, params.bootstrap, params.ci,
                                                params.seed, units)
                 for split, (y, logits, units) in evaluated.items()}
    prev = {c: {split: float(np.mean(y == k)) if len(y) else None for split, (y, _, _) in evaluated.items()}
            for k, c in enumerate(classes)}
    return {"stored": ops, **per_split,
            "prevalence_table": prevalence_table(per_split["val"], prev, params.prevalences)}


def extras(model: TrainedModel, processed: Path, evaluated: dict, plain: dict, params: EvaluateParams) -> dict:
    """``calibration``, ``tta`` and ``operating_points`` of eval.json (see the module docstring)."""
    return {"calibration": calibration_block(model, evaluated, params),
            "tta": tta_block(model, processed, evaluated, plain, params),
            "operating_points": operating_points_block(model, evaluated, params)}


# ---------------------------------------------------------------------------------------------------------------------
# reports/<model>/evaluation.md


def _ci(m: dict, k: str) -> str:
    return fmt_interval(m.get(k), m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high"))


def _calibration_md(c: dict, splits: list[str]) -> list[str]:
    lines = [f"## Calibration ({c['method']}, T = {c['temperature']:.3f}, fitted on val)", "",
             "| split | ECE before | ECE after | NLL before | NLL after |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {fmt(c[s]['ece_before'])} | {fmt(c[s]['ece_after'])} | {fmt(c[s]['nll_before'])} | "
              f"{fmt(c[s]['nll_after'])} |" for s in splits]
    return lines + [""]


def _tta_md(t: dict | None, splits: list[str]) -> list[str]:
    if t is None:
        return []
    lines = [f"## Test-time augmentation ({t['mode']}: {', '.join(t['views'])})", "",
             "| split | figures | accuracy | macro recall | macro AUC | ECE |", "|---|---|---|---|---|---|"]
    for s in splits:
        for kind in ("plain", "tta"):
            m = t[s][kind]
            lines.append(f"| {s} | {kind} | {_ci(m, 'accuracy')} | {_ci(m, 'macro_recall')} | "
                         f"{_ci(m, 'macro_auc')} | {fmt(m['ece'])} |")
    return lines + [""]


def _ops_md(o: dict, splits: list[str]) -> list[str]:
    lines = ["## Operating points (chosen on val)", "",
             "| operating point | rule | class | threshold | " + " | ".join(
                 f"{s} sensitivity | {s} specificity" for s in splits) + " |",
             "|---|---|---|---|" + "---|---|" * len(splits)]
    for name, op in o["stored"].items():
        for c in o["val"][name]:
            cells = [f"{_ci(o[s][name][c], 'sensitivity')} | {_ci(o[s][name][c], 'specificity')}" for s in splits]
            lines.append(f"| {name} | {op['rule']} | {c} | {fmt(op['threshold'], 4)} | " + " | ".join(cells) + " |")
    lines += ["", "## Prevalence shift (PPV / NPV / accuracy expected from the val sensitivity and specificity)", "",
              "| operating point | class | at | prevalence | PPV | NPV | accuracy |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['operating_point']} | {r['class']} | {r['at']} | {r['prevalence']:.3f} | {fmt(r['ppv'])} | "
              f"{fmt(r['npv'])} | {fmt(r['accuracy'])} |" for r in o["prevalence_table"]]
    return lines + [""]


def _no_skill_md(out: dict, splits: list[str]) -> list[str]:
    lines = ["## No-skill line (constant classifiers on the same images)", "",
             "| split | images | prevalence | always the majority class | macro recall | AUC | model accuracy | lift "
             "over the majority class | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for s in splits:
        m = out.get(s) or {}
        b = m.get("no_skill")
        if not b:
            continue
        prev = ", ".join(f"{c} {fmt(v)}" for c, v in b["prevalence"].items())
        verdict = metrics.no_skill_note(m) if m.get("no_better_than_majority") else "better than the majority class"
        lines.append(f"| {s} | {b['n_samples']} | {prev} | {b['majority_class']}: {fmt(b['majority_share'])} | "
                     f"{fmt(b['macro_recall'])} | {fmt(b['macro_auc'], 1)} | {_ci(m, 'accuracy')} | "
                     f"{fmt_interval(m.get('lift_over_majority'), m.get('lift_ci_low'), m.get('lift_ci_high'))} | "
                     f"{verdict} |")
    return lines + [""]


def summary_line(label: str, out: dict) -> str:
    """One line for a stage's log: the headline figures of the test split (of val when the test split is held back)
    with their intervals, the no-skill line beside the accuracy (the majority class's share and the lift over it, or
    "no better than always answering <class>": :mod:`lungxray.evaluate.metrics.no_skill`), the ECE (and, for a
    calibrated model, its temperature and the ECE before it), the speed."""
    split = "test" if out.get("test") is not None else "val"
    t, cal = out[split], out.get("calibration")
    ece = f"ECE {fmt(t.get('ece'))}"
    if cal:
        ece += f" (T {cal['temperature']:.2f}; {fmt(cal[split]['ece_before'])} uncalibrated)"
    note = metrics.no_skill_note(t)
    note = f" ({'WARNING: ' if t.get('no_better_than_majority') else ''}{note})" if note else ""
    return (f"{label} on {t['n_samples']} {split} images: accuracy {_ci(t, 'accuracy')}{note}, macro recall "
            f"{_ci(t, 'macro_recall')}, macro AUC {_ci(t, 'macro_auc')}, {ece}; "
            f"{out['throughput']['images_per_s']:.0f} images/s")


def evaluation_markdown(name: str, out: dict) -> str:
    """The evaluation report of one model: the no-skill line, calibration, test-time augmentation, operating points,
    prevalence."""
    splits = [s for s in ("val", "test") if s in out["calibration"]]
    lines = [f"# {name}: calibration and operating points", ""]
    lines += _no_skill_md(out, splits) + _calibration_md(out["calibration"], splits) + _tta_md(out["tta"], splits)
    return "\n".join(lines + _ops_md(out["operating_points"], splits))
