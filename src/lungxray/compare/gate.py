"""The CI regression gate: compare this run's metrics with a reviewed baseline file. Pure functions (and the writer).

* Metrics are flat ``{dotted.key: float}`` dicts (:func:`collect_metrics` flattens the stages' nested JSON files).
* A metric is checked when it has a tolerance: an exact key of ``tolerances``, else the most specific matching
  ``fnmatch`` pattern among its keys (``"*.test.accuracy"``; longest pattern wins, then alphabetical), else
  ``default_tolerance`` (None: only listed metrics are checked).
* A tolerance is the largest allowed *absolute* worsening: a drop for higher-is-better metrics, a rise for the ones
  matching ``lower_is_better`` (patterns; by default calibration error, losses, latencies, durations).
* Verdicts: ``REGRESSION`` (worse by more than the tolerance), ``missing`` (in the baseline, or named exactly in
  ``tolerances``, but absent / not finite now), ``improved`` (better), ``ok`` (no worse than the tolerance),
  ``new`` (checked-eligible, absent from the baseline: reported, never fails). The gate passes when no row is
  ``REGRESSION`` or ``missing``.
* Numbers are compared only when they were measured on the same images. The baseline file carries, beside the
  numbers, each model's evaluation-set fingerprints (``"<model>.test_set"``, ``"<model>.val_set"``: strings, which
  :func:`load_baseline` skips); :func:`set_mismatches` lists those that differ from the current ones (a baseline
  without them counts as different). The check is then **refused**, neither a pass nor a regression: a change of
  the data is not a change of the model.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.io import read_json, write_json
from lungxray.core.numbers import finite

__all__ = ["GateParams", "collect_metrics", "flatten_metrics", "check", "format_table", "write_baseline",
           "load_baseline", "load_baseline_sets", "set_mismatches", "FAILING", "SET_KEYS"]

FAILING = ("REGRESSION", "missing")
SET_KEYS = ("test_set", "val_set")  # eval.json's fingerprints of the images the metrics were computed on
_EPS = 1e-12


class GateParams(Strict):

    baseline: str = Field("metrics/baseline.json", description="the reviewed baseline metrics file this run is "
                                                               "compared with")
    tolerances: dict[str, float] = Field(default_factory=dict,
                                         description="metric key or fnmatch pattern -> allowed absolute worsening")
    default_tolerance: float | None = Field(None, ge=0, description="for metrics not in tolerances (None: unchecked)")
    lower_is_better: list[str] = Field(
        default_factory=lambda: ["*ece", "*mce", "*loss", "*latency_ms*", "*seconds*"],
        description="fnmatch patterns of metrics where lower is better")


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as ``{"a.b.c": float}`` (strings, lists, booleans and None are skipped)."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(flatten_metrics(v, key))
    else:
        x = finite(obj)
        if x is not None and prefix:
            out[prefix] = x
    return out


def collect_metrics(paths: Mapping[str, Any]) -> dict[str, float]:
    """Flatten several metric documents under prefixes: ``{"cnn5": {"test": {"accuracy": .9}}}`` ->
    ``{"cnn5.test.accuracy": .9}``. A value may be a loaded dict or a path to a JSON file; prefix "" adds none."""
    out: dict[str, float] = {}
    for prefix, doc in paths.items():
        if isinstance(doc, (str, os.PathLike)):
            doc = read_json(doc)
        out.update(flatten_metrics(doc, str(prefix)))
    return dict(sorted(out.items()))


def load_baseline(path: str | os.PathLike) -> dict[str, float]:
    return flatten_metrics(read_json(path))


def load_baseline_sets(path: str | os.PathLike) -> dict[str, str]:
    """The evaluation-set fingerprints stored in a baseline file: ``{"<model>.test_set": fingerprint, ...}``."""
    data = read_json(path)
    return {k: v for k, v in data.items() if isinstance(v, str) and k.rpartition(".")[2] in SET_KEYS}


def write_baseline(current: Mapping[str, float], path: str | os.PathLike,
                   sets: Mapping[str, str] | None = None) -> Path:
    """Write the flat metrics and the evaluation-set fingerprints (``{"<model>.test_set": ...}``; sorted keys,
    atomically) for review and commit as the new baseline."""
    data: dict[str, Any] = {k: finite(v) for k, v in current.items() if finite(v) is not None}
    data.update({k: str(v) for k, v in (sets or {}).items() if v is not None})
    write_json(path, dict(sorted(data.items())))
    return Path(path)


def set_mismatches(current: Mapping[str, str], baseline_sets: Mapping[str, str],
                   baseline: Mapping[str, float]) -> list[dict[str, Any]]:
    """Evaluation sets of the baseline's models that differ from the current ones (or that the baseline lacks).

    ``current`` and ``baseline_sets`` map ``"<model>.test_set"`` / ``"<model>.val_set"`` to fingerprints; only models
    that have numbers in ``baseline`` and now are considered (a model new or gone is reported by :func:`check`).
    """
    models = {k.split(".", 1)[0] for k in baseline}
    out = []
    for key in sorted(current):
        model = key.rpartition(".")[0]
        if model in models and baseline_sets.get(key) != current[key]:
            out.append({"key": key, "baseline": baseline_sets.get(key), "current": current[key]})
    return out


def _tolerance(key: str, p: GateParams) -> float | None:
    if key in p.tolerances:
        return float(p.tolerances[key])
    matches = [pat for pat in p.tolerances if fnmatch.fnmatchcase(key, pat)]
    if matches:
        return float(p.tolerances[sorted(matches, key=lambda s: (-len(s), s))[0]])
    return p.default_tolerance


def _lower_better(key: str, p: GateParams) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in p.lower_is_better)


def check(current: Mapping[str, float], baseline: Mapping[str, float],
          params: GateParams | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Rows (metric, baseline, current, change, tolerance, direction, verdict), sorted by metric, and pass/fail."""
    p = params or GateParams()
    cur = {k: finite(v) for k, v in current.items()}
    base = {k: finite(v) for k, v in baseline.items()}
    exact = {k for k in p.tolerances if not any(ch in k for ch in "*?[")}
    keys = sorted(set(base) | set(cur) | exact)
    rows = []
    for k in keys:
        tol = _tolerance(k, p)
        if tol is None:
            continue
        b, c = base.get(k), cur.get(k)
        lower = _lower_better(k, p)
        change = None if b is None or c is None else c - b
        if c is None and (b is not None or k in exact):
            verdict = "missing"
        elif b is None:
            if c is None:
                continue
            verdict = "new"
        else:
            worse = -change if not lower else change
            if worse > tol + _EPS:
                verdict = "REGRESSION"
            elif worse < -_EPS:
                verdict = "improved"
            else:
                verdict = "ok"
        rows.append({"metric": k, "baseline": b, "current": c, "change": change, "tolerance": tol,
                     "direction": "lower" if lower else "higher", "verdict": verdict})
    ok = not any(r["verdict"] in FAILING for r in rows)
    return rows, ok


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table of :func:`check`'s rows (numbers to 4 decimals, change signed)."""
    head = ["metric", "baseline", "current", "change", "tolerance", "better", "verdict"]

    def num(v, signed=False):
        return "-" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")

    body = [[r["metric"], num(r["baseline"]), num(r["current"]), num(r["change"], True), num(r["tolerance"]),
             r.get("direction", "higher"), r["verdict"]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    left = {0, 5, 6}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in body]
    n_bad = sum(r["verdict"] in FAILING for r in rows)
    out.append(f"{len(rows)} metrics checked: " + ("no regression" if n_bad == 0 else f"{n_bad} failing"))
    return "\n".join(out) + "\n"
