"""Operating points on an evaluated split, and how they behave when the prevalence changes.

* An operating point (chosen on val: :mod:`lungxray.models.calibration`) turns probabilities into one decision per image
  for its class (``prob_<class> >= threshold``); ``argmax`` gives one per class (the arg-max is that class).
  :func:`operating_point_metrics` reports, per decision, sensitivity, specificity, PPV and NPV on the split with
  percentile bootstrap intervals of sensitivity and specificity over the split units (the same cluster resampling as
  :mod:`.bootstrap`).
* Sensitivity and specificity do not depend on the prevalence; PPV, NPV and accuracy do. :func:`prevalence_table`
  gives, from the **val** sensitivity / specificity of each operating point, at prevalence ``pi``:
  ``PPV = sens*pi / (sens*pi + (1-spec)*(1-pi))``, ``NPV = spec*(1-pi) / (spec*(1-pi) + (1-sens)*pi)`` and the
  prevalence-reweighted accuracy ``sens*pi + spec*(1-pi)`` (``None`` where a denominator is 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lungxray.evaluate.metrics.bootstrap import bootstrap_counts, percentile_interval, unit_codes
from lungxray.evaluate.metrics.primitives import json_float, safe_div


def decision_metrics(y: np.ndarray, flag: np.ndarray, k: int, resamples: int, ci: float, seed: int,
                     units: Sequence | None = None) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV of the decisions ``flag`` (bool, N) for class ``k``, the prevalence, and
    bootstrap intervals of sensitivity and specificity."""
    pos, flag = np.asarray(y) == k, np.asarray(flag, dtype=bool)
    tp, fn = float((flag & pos).sum()), float((~flag & pos).sum())
    fp, tn = float((flag & ~pos).sum()), float((~flag & ~pos).sum())
    out = {"sensitivity": json_float(safe_div(tp, tp + fn)), "specificity": json_float(safe_div(tn, tn + fp)), "ppv": json_float(safe_div(tp, tp + fp)),
           "npv": json_float(safe_div(tn, tn + fn)), "prevalence": json_float(safe_div(tp + fn, pos.size)), "flagged": int(flag.sum()),
           "n_samples": int(pos.size)}
    for key in ("sensitivity", "specificity"):
        out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = None
    if resamples > 0 and pos.size:
        codes, n_units = unit_codes(units, pos.size)
        w = bootstrap_counts(n_units, resamples, np.random.default_rng(seed))[:, codes]
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = (w @ (flag & pos)) / (w @ pos)
            spec = (w @ (~flag & ~pos)) / (w @ ~pos)
        for key, v in (("sensitivity", sens), ("specificity", spec)):
            iv = percentile_interval(v, ci)
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = iv["low"], iv["high"]
    return out


def operating_point_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], ops: dict[str, dict],
                            resamples: int, ci: float = 0.95, seed: int = 0,
                            units: Sequence | None = None) -> dict[str, dict]:
    """``{operating point: {class: decision_metrics}}`` on one split (a threshold rule: its own class only)."""
    y, p = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    out: dict[str, dict] = {}
    for name, op in ops.items():
        if op["class"] is None:
            pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
            out[name] = {c: decision_metrics(y, pred == k, k, resamples, ci, seed, units)
                         for k, c in enumerate(classes)}
        else:
            k = list(classes).index(op["class"])
            out[name] = {op["class"]: decision_metrics(y, p[:, k] >= op["threshold"], k, resamples, ci, seed, units)}
    return out


def at_prevalence(sens: float | None, spec: float | None, pi: float) -> dict[str, float | None]:
    """PPV, NPV and the reweighted accuracy of a rule with sensitivity ``sens`` and specificity ``spec`` at
    prevalence ``pi``."""
    if sens is None or spec is None:
        return {"ppv": None, "npv": None, "accuracy": None}
    return {"ppv": json_float(safe_div(sens * pi, sens * pi + (1 - spec) * (1 - pi))),
            "npv": json_float(safe_div(spec * (1 - pi), spec * (1 - pi) + (1 - sens) * pi)),
            "accuracy": json_float(sens * pi + spec * (1 - pi))}


def prevalence_table(val: dict[str, dict], prevalences: dict[str, dict[str, float | None]],
                     fixed: Sequence[float]) -> list[dict[str, Any]]:
    """One row per operating point, class and prevalence: the PPV / NPV / accuracy expected from the val sensitivity
    and specificity (``val``: :func:`operating_point_metrics` on val) at the class's val and test prevalence
    (``prevalences[class]``: ``{"val": pi, "test": pi}``) and at each ``fixed`` prevalence."""
    rows = []
    for name, per_class in val.items():
        for c, m in per_class.items():
            settings = [(f"{split} prevalence", pi) for split, pi in prevalences.get(c, {}).items() if pi is not None]
            for label, pi in settings + [("set", float(pi)) for pi in fixed]:
                rows.append({"operating_point": name, "class": c, "prevalence": pi, "at": label,
                             "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                             **at_prevalence(m["sensitivity"], m["specificity"], pi)})
    return rows
